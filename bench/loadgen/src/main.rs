//! Fixed-rate (open loop) HTTP/1.1 load generator: latency at a chosen load.
//!
//! `wrk` runs a closed loop (every connection sends its next request as soon as the previous
//! answer arrives), which measures the maximum throughput but not the latency at a given
//! load; wrk2, which does, is not packaged by Debian. This is the part of wrk2 the benchmarks
//! need:
//!
//! * N keep-alive connections (`TCP_NODELAY`), opened before the run;
//! * request i is *scheduled* at start + i / rate; at that moment it goes out on an idle
//!   connection, or waits in a FIFO until one is free;
//! * latency runs from the scheduled time to the last byte of the answer, so a stall of the
//!   server is charged to every request it delayed (no coordinated omission);
//! * a warm-up at the same rate is run first and not recorded;
//! * the run is bounded: scheduling stops after the duration, and the last answers are
//!   waited for at most `--drain` seconds (those still missing count as timeouts).
//!
//! It shares its CPU with the servers it measures on a small machine, so it is written to cost
//! little per request: one thread, edge-free epoll, and sleeps with nanosecond timeouts
//! (`ppoll` on the epoll descriptor; `epoll_wait` alone rounds up to whole milliseconds).
//! Sleeps end late, in a virtual machine by tens of microseconds even with 1 ns timer slack,
//! so it learns by how much ([`Oversleep`]), wakes that much before the next request is due
//! and polls for the rest, yielding the CPU between polls: a fixed margin would either send
//! late or burn the shared CPU polling. It reports how late requests left (`send_lag_us`), so
//! that a saturated generator shows instead of silently inflating the figures.
//!
//! Output: one JSON object on stdout (rates in requests/s, latencies in microseconds).

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use clap::Parser;

const READ_SIZE: usize = 65536;
const MAX_EVENTS: usize = 256;

#[derive(Parser)]
#[command(about = "Fixed-rate (open loop) HTTP/1.1 load generator")]
struct Args {
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long)]
    port: u16,
    #[arg(long, default_value = "/")]
    path: String,
    /// The Host header (default host:port).
    #[arg(long)]
    host_header: Option<String>,
    /// A further request header, `NAME: VALUE` (repeatable).
    #[arg(long = "header", value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// Requests per second.
    #[arg(long)]
    rate: f64,
    /// Recorded seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Unrecorded seconds first, at the same rate.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// At most this many seconds to wait for the last answers.
    #[arg(long, default_value_t = 5.0)]
    drain: f64,
}

fn main() {
    let args = Args::parse();
    if !(args.rate > 0.0 && args.duration > 0.0) || args.connections == 0 {
        eprintln!("tollgate-loadgen: rate, connections and duration must be positive");
        std::process::exit(2);
    }
    match run(&args) {
        Ok(report) => println!("{report}"),
        Err(error) => {
            eprintln!("tollgate-loadgen: {error}");
            std::process::exit(1);
        }
    }
}

/// How far one connection's current answer has been read.
#[derive(Default)]
struct Answer {
    /// The head has been read: status and framing are known.
    head_done: bool,
    status: u16,
    /// Body bytes expected (with `content-length`).
    length: usize,
    chunked: bool,
    keep_alive: bool,
}

struct Connection {
    stream: TcpStream,
    /// Bytes read and not yet consumed.
    buffer: Vec<u8>,
    busy: bool,
    /// When the request in flight was scheduled.
    scheduled: Instant,
    answer: Answer,
}

impl Connection {
    fn open(host: &str, port: u16) -> io::Result<Self> {
        let stream = TcpStream::connect((host, port))?;
        stream.set_nodelay(true)?;
        stream.set_nonblocking(true)?;
        Ok(Self {
            stream,
            buffer: Vec::with_capacity(4096),
            busy: false,
            scheduled: Instant::now(),
            answer: Answer::default(),
        })
    }

    /// Consumes one complete answer from the buffer: `Some(keep_alive)` once it is complete.
    fn take_answer(&mut self) -> Result<Option<bool>, String> {
        if !self.answer.head_done {
            let Some(end) = find(&self.buffer, b"\r\n\r\n") else {
                return Ok(None);
            };
            self.answer = parse_head(&self.buffer[..end + 2])?;
            self.buffer.drain(..end + 4);
        }
        let consumed = if self.answer.chunked {
            match chunked_end(&self.buffer)? {
                Some(end) => end,
                None => return Ok(None),
            }
        } else if self.buffer.len() >= self.answer.length {
            self.answer.length
        } else {
            return Ok(None);
        };
        self.buffer.drain(..consumed);
        Ok(Some(self.answer.keep_alive))
    }
}

/// The first position of `needle` in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// The status and framing of a response head (status line and header lines, each ending
/// in CRLF).
fn parse_head(head: &[u8]) -> Result<Answer, String> {
    let bad = || {
        format!(
            "bad status line: {:?}",
            String::from_utf8_lossy(&head[..head.len().min(40)])
        )
    };
    if !head.starts_with(b"HTTP/1.") || head.len() < 12 {
        return Err(bad());
    }
    let status = std::str::from_utf8(&head[9..12])
        .ok()
        .and_then(|digits| digits.parse().ok())
        .ok_or_else(bad)?;
    let mut answer = Answer {
        head_done: true,
        status,
        keep_alive: true,
        ..Answer::default()
    };
    let mut has_length = false;
    for line in head.split(|&byte| byte == b'\n').skip(1) {
        let Some(colon) = line.iter().position(|&byte| byte == b':') else {
            continue;
        };
        let name = &line[..colon];
        let value = String::from_utf8_lossy(&line[colon + 1..])
            .trim()
            .to_ascii_lowercase();
        if name.eq_ignore_ascii_case(b"content-length") {
            answer.length = value
                .parse()
                .map_err(|_| format!("bad content-length {value:?}"))?;
            has_length = true;
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            answer.chunked = value.contains("chunked");
        } else if name.eq_ignore_ascii_case(b"connection") {
            answer.keep_alive = !value.contains("close");
        }
    }
    // A length takes precedence, as it does for the gateway's own framing checks.
    answer.chunked &= !has_length;
    Ok(answer)
}

/// Where a chunked body that starts the buffer ends (last chunk and trailer section
/// included), once all of it has arrived.
fn chunked_end(buffer: &[u8]) -> Result<Option<usize>, String> {
    let mut position = 0;
    loop {
        let Some(line_end) = find(&buffer[position..], b"\r\n").map(|end| position + end) else {
            return Ok(None);
        };
        let size_text = buffer[position..line_end]
            .split(|&byte| byte == b';')
            .next()
            .unwrap_or_default();
        let size = std::str::from_utf8(size_text)
            .ok()
            .and_then(|text| usize::from_str_radix(text.trim(), 16).ok())
            .ok_or_else(|| "bad chunk size".to_string())?;
        if size == 0 {
            // The trailer section ends with an empty line; the last-chunk line's CRLF may be
            // the start of it.
            return Ok(find(&buffer[line_end..], b"\r\n\r\n").map(|end| line_end + end + 4));
        }
        let next = line_end + 2 + size + 2;
        if buffer.len() < next {
            return Ok(None);
        }
        position = next;
    }
}

/// The nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// An epoll set of connections, each registered under its index.
struct Poller {
    epoll: i32,
    events: Vec<libc::epoll_event>,
}

impl Poller {
    fn new() -> io::Result<Self> {
        // SAFETY: a plain system call; the result is checked.
        let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epoll < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            epoll,
            events: vec![libc::epoll_event { events: 0, u64: 0 }; MAX_EVENTS],
        })
    }

    fn add(&self, connection: &Connection, index: usize) -> io::Result<()> {
        let mut event = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: index as u64,
        };
        // SAFETY: the descriptors are open and `event` outlives the call.
        let result = unsafe {
            libc::epoll_ctl(
                self.epoll,
                libc::EPOLL_CTL_ADD,
                connection.stream.as_raw_fd(),
                &mut event,
            )
        };
        if result < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Sleeps at most `timeout` (with nanosecond resolution) until a connection is readable;
    /// whether it slept the whole time.
    fn sleep(&self, timeout: Duration) -> bool {
        let mut descriptor = libc::pollfd {
            fd: self.epoll,
            events: libc::POLLIN,
            revents: 0,
        };
        let timeout = libc::timespec {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        // SAFETY: one valid pollfd and timespec for the duration of the call.
        unsafe { libc::ppoll(&mut descriptor, 1, &timeout, std::ptr::null()) == 0 }
    }

    /// The indexes of the connections readable now, without waiting.
    fn ready(&mut self) -> impl Iterator<Item = usize> + '_ {
        // SAFETY: `events` has room for MAX_EVENTS entries.
        let count =
            unsafe { libc::epoll_wait(self.epoll, self.events.as_mut_ptr(), MAX_EVENTS as i32, 0) };
        self.events[..count.max(0) as usize]
            .iter()
            .map(|event| event.u64 as usize)
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        // SAFETY: the descriptor is ours and closed once.
        unsafe { libc::close(self.epoll) };
    }
}

/// How late sleeps end, learnt from the sleeps that ran to their timeout: a moving average,
/// so that one descheduled sleep does not make the generator poll for long.
struct Oversleep {
    average: Duration,
}

impl Oversleep {
    /// Polling covers this much beyond the average lateness.
    const MARGIN: Duration = Duration::from_micros(5);
    const MAX: Duration = Duration::from_micros(200);

    fn new() -> Self {
        Self {
            average: Duration::from_micros(30),
        }
    }

    /// How long before a due request to stop sleeping.
    fn wake_early(&self) -> Duration {
        (self.average + Self::MARGIN).min(Self::MAX)
    }

    /// A sleep meant to end at `target` ended at `woke`.
    fn record(&mut self, target: Instant, woke: Instant) {
        let late = woke.saturating_duration_since(target).min(Self::MAX);
        self.average = (self.average * 7 + late) / 8;
    }
}

/// Asks Linux for 1 ns timer slack (the default is 50 µs), so that sleeps end on time.
fn tighten_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes one integer argument.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1, 0, 0, 0) };
}

#[derive(Default)]
struct Errors {
    status: u64,
    io: u64,
    timeout: u64,
    reconnect: u64,
}

/// The run's state: connections, the requests waiting for one, and what was recorded.
struct Run<'a> {
    args: &'a Args,
    request: Vec<u8>,
    poller: Poller,
    connections: Vec<Connection>,
    /// Indexes of idle connections, the most recently used last.
    idle: Vec<usize>,
    /// Scheduled times of due requests waiting for a free connection.
    waiting: VecDeque<Instant>,
    outstanding: usize,
    record_from: Instant,
    /// Microseconds from schedule to the answer's last byte, recorded requests only.
    latencies: Vec<f64>,
    /// Microseconds from schedule to send, recorded requests only.
    lags: Vec<f64>,
    statuses: BTreeMap<u16, u64>,
    errors: Errors,
    last_done: Instant,
}

impl Run<'_> {
    /// Sends a request scheduled at `scheduled` on connection `index`.
    fn send(&mut self, index: usize, scheduled: Instant, now: Instant) -> bool {
        let connection = &mut self.connections[index];
        connection.busy = true;
        connection.scheduled = scheduled;
        connection.answer = Answer::default();
        // A request is far smaller than a socket buffer, so it goes out whole or not at all.
        match connection.stream.write(&self.request) {
            Ok(written) if written == self.request.len() => {}
            _ => {
                self.errors.io += 1;
                connection.busy = false;
                return false;
            }
        }
        self.outstanding += 1;
        if scheduled >= self.record_from {
            self.lags.push(micros(now - scheduled));
        }
        true
    }

    /// Replaces connection `index` (closed, or in an unknown state) by a new one.
    fn replace(&mut self, index: usize) -> io::Result<()> {
        let connection = Connection::open(&self.args.host, self.args.port)?;
        self.poller.add(&connection, index)?;
        // Dropping the old stream closes it, which also takes it out of the epoll set.
        self.connections[index] = connection;
        self.errors.reconnect += 1;
        Ok(())
    }

    /// Connection `index` is free: it takes the oldest waiting request, or goes idle.
    fn release(&mut self, index: usize, now: Instant) -> io::Result<()> {
        while let Some(scheduled) = self.waiting.pop_front() {
            if self.send(index, scheduled, now) {
                return Ok(());
            }
            self.replace(index)?;
        }
        self.idle.push(index);
        Ok(())
    }

    /// Reads what connection `index` has, and completes its answer if it is all there.
    fn read(&mut self, index: usize, scratch: &mut [u8]) -> io::Result<()> {
        let connection = &mut self.connections[index];
        let read = match connection.stream.read(scratch) {
            Err(error) if error.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(_) => 0,
            Ok(read) => read,
        };
        let done_at = Instant::now();
        if read == 0 || !connection.busy {
            // Closed by the server, or bytes nobody asked for: a new connection.
            if connection.busy {
                self.errors.io += 1;
                self.outstanding -= 1;
            } else {
                self.idle.retain(|&idle| idle != index);
            }
            self.replace(index)?;
            return self.release(index, done_at);
        }
        connection.buffer.extend_from_slice(&scratch[..read]);
        let keep_alive = match connection.take_answer() {
            Ok(None) => return Ok(()),
            Ok(Some(keep_alive)) => keep_alive,
            Err(_) => {
                self.errors.io += 1;
                self.outstanding -= 1;
                connection.busy = false;
                self.replace(index)?;
                return self.release(index, done_at);
            }
        };
        connection.busy = false;
        self.outstanding -= 1;
        if connection.scheduled >= self.record_from {
            let status = connection.answer.status;
            self.last_done = done_at;
            self.latencies.push(micros(done_at - connection.scheduled));
            *self.statuses.entry(status).or_default() += 1;
            if !(200..400).contains(&status) {
                self.errors.status += 1;
            }
        }
        if !keep_alive {
            self.replace(index)?;
        }
        self.release(index, Instant::now())
    }
}

fn micros(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}

fn run(args: &Args) -> io::Result<serde_json::Value> {
    tighten_timer_slack();
    let host_header = args
        .host_header
        .clone()
        .unwrap_or_else(|| format!("{}:{}", args.host, args.port));
    let mut request = format!(
        "GET {} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: tollgate-bench\r\n",
        args.path
    );
    for header in &args.headers {
        if !header.contains(':') || header.contains(['\r', '\n']) {
            return Err(io::Error::new(
                ErrorKind::InvalidInput,
                format!("--header {header:?} is not one `NAME: VALUE` line"),
            ));
        }
        request.push_str(header);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    let request = request.into_bytes();

    let poller = Poller::new()?;
    let mut connections = Vec::with_capacity(args.connections);
    for index in 0..args.connections {
        let connection = Connection::open(&args.host, args.port)?;
        poller.add(&connection, index)?;
        connections.push(connection);
    }

    let interval = Duration::from_secs_f64(1.0 / args.rate);
    let warm_count = (args.warmup * args.rate) as u64;
    let total = warm_count + (args.duration * args.rate) as u64;
    let start = Instant::now() + Duration::from_millis(50);
    let scheduled_at = |i: u64| start + interval.mul_f64(i as f64);
    let record_from = scheduled_at(warm_count);
    let deadline = scheduled_at(total) + Duration::from_secs_f64(args.drain);

    let mut run = Run {
        args,
        request,
        poller,
        idle: (0..connections.len()).rev().collect(),
        connections,
        waiting: VecDeque::new(),
        outstanding: 0,
        record_from,
        latencies: Vec::with_capacity((args.duration * args.rate) as usize + 1),
        lags: Vec::with_capacity((args.duration * args.rate) as usize + 1),
        statuses: BTreeMap::new(),
        errors: Errors::default(),
        last_done: record_from,
    };
    let mut scratch = vec![0u8; READ_SIZE];
    let mut ready = Vec::with_capacity(MAX_EVENTS);
    let mut next = 0u64;
    let mut oversleep = Oversleep::new();
    loop {
        let now = Instant::now();
        // Issue every request that is due.
        while next < total && scheduled_at(next) <= now {
            run.waiting.push_back(scheduled_at(next));
            next += 1;
            if let Some(index) = run.idle.pop() {
                run.release(index, now)?;
            }
        }
        if next >= total && run.outstanding == 0 && run.waiting.is_empty() {
            break;
        }
        if now > deadline {
            run.errors.timeout += (run.outstanding + run.waiting.len()) as u64;
            break;
        }
        let gap = if next < total {
            scheduled_at(next).saturating_duration_since(now)
        } else {
            deadline
                .saturating_duration_since(now)
                .min(Duration::from_millis(10))
        };
        let wake_early = oversleep.wake_early();
        if gap > wake_early {
            let target = now + (gap - wake_early);
            if run.poller.sleep(gap - wake_early) {
                oversleep.record(target, Instant::now());
            }
        }
        ready.clear();
        ready.extend(run.poller.ready());
        if ready.is_empty() && gap <= wake_early {
            // Polling without sleeping: a server sharing this CPU runs at once.
            std::thread::yield_now();
        }
        for &index in &ready {
            run.read(index, &mut scratch)?;
        }
    }

    run.latencies.sort_by(f64::total_cmp);
    run.lags.sort_by(f64::total_cmp);
    // Requests recorded over the time from the first recorded schedule to the last answer:
    // below the target rate when the server (or this generator) could not keep up.
    let span = args
        .duration
        .max((run.last_done - record_from).as_secs_f64());
    let round = |value: Option<f64>| value.map(|value| (value * 10.0).round() / 10.0);
    let latency = |p: f64| round(percentile(&run.latencies, p));
    let lag = |p: f64| round(percentile(&run.lags, p));
    Ok(serde_json::json!({
        "target_rate": args.rate,
        "achieved_rate": (run.latencies.len() as f64 / span * 10.0).round() / 10.0,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "connections": args.connections,
        "requests": run.latencies.len(),
        "errors": {
            "status": run.errors.status,
            "io": run.errors.io,
            "timeout": run.errors.timeout,
            "reconnect": run.errors.reconnect,
        },
        "statuses": run.statuses.iter().map(|(status, count)| (status.to_string(), serde_json::Value::from(*count))).collect::<serde_json::Map<_, _>>(),
        "latency_us": {
            "p50": latency(50.0),
            "p90": latency(90.0),
            "p99": latency(99.0),
            "p99.9": latency(99.9),
            "max": round(run.latencies.last().copied()),
        },
        "send_lag_us": {
            "p50": lag(50.0),
            "p99": lag(99.0),
            "max": round(run.lags.last().copied()),
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_give_status_and_framing() {
        let answer = parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n").unwrap();
        assert_eq!(
            (
                answer.status,
                answer.length,
                answer.chunked,
                answer.keep_alive
            ),
            (200, 12, false, true)
        );
        let answer =
            parse_head(b"HTTP/1.1 503 Nope\r\ntransfer-encoding: chunked\r\nconnection: close\r\n")
                .unwrap();
        assert_eq!(
            (answer.status, answer.chunked, answer.keep_alive),
            (503, true, false)
        );
        assert!(parse_head(b"SSH-2.0\r\n").is_err());
    }

    #[test]
    fn chunked_bodies_end_after_their_trailers() {
        assert_eq!(chunked_end(b"2\r\nok\r\n0\r\n\r\n").unwrap(), Some(12));
        assert_eq!(
            chunked_end(b"2\r\nok\r\n0\r\nx-t: 1\r\n\r\nHTTP").unwrap(),
            Some(20)
        );
        assert_eq!(chunked_end(b"2\r\nok\r\n0\r\n").unwrap(), None);
        assert_eq!(chunked_end(b"5\r\nok").unwrap(), None);
    }

    #[test]
    fn answers_split_across_reads_complete_once() {
        let (client, _server) = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            (client, listener.accept().unwrap().0)
        };
        let mut connection = Connection {
            stream: client,
            buffer: b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\no".to_vec(),
            busy: true,
            scheduled: Instant::now(),
            answer: Answer::default(),
        };
        assert_eq!(connection.take_answer(), Ok(None));
        connection.buffer.extend_from_slice(b"kHTTP");
        assert_eq!(connection.take_answer(), Ok(Some(true)));
        assert_eq!(connection.buffer, b"HTTP");
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&values, 50.0), Some(50.0));
        assert_eq!(percentile(&values, 99.0), Some(99.0));
        assert_eq!(percentile(&values, 99.9), Some(100.0));
        assert_eq!(percentile(&[], 50.0), None);
    }
}
