//! Reading samples out of the Prometheus text format served on `/metrics`.

/// The sum of the values of every `NAME{...}` sample that has all `labels` (other labels
/// may be present, in any order); `None` when no sample matches.
pub fn sample_sum(metrics: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let matching: Vec<f64> = metrics
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (label_text, value) = match rest.strip_prefix('{') {
                Some(inner) => {
                    let (labels, value) = inner.split_once('}')?;
                    (labels, value)
                }
                None if rest.starts_with(' ') => ("", rest),
                None => return None,
            };
            let present = |(key, expected): &(&str, &str)| {
                label_text
                    .split(',')
                    .any(|pair| pair.trim() == format!("{key}=\"{expected}\""))
            };
            if !labels.iter().all(present) {
                return None;
            }
            value.split_whitespace().next()?.parse::<f64>().ok()
        })
        .collect();
    (!matching.is_empty()).then(|| matching.iter().sum())
}

/// How many plugin callbacks the gateway ran for `plugin` between two `/metrics` texts
/// (`tollgate_plugin_callbacks_total`, which counts every entry into the plugin's VMs).
pub fn plugin_callbacks_between(before: &str, after: &str, plugin: &str) -> f64 {
    let count = |text: &str| {
        sample_sum(
            text,
            "tollgate_plugin_callbacks_total",
            &[("plugin", plugin)],
        )
        .unwrap_or(0.0)
    };
    count(after) - count(before)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# TYPE tollgate_requests_total counter\n\
        tollgate_requests_total{route=\"a\",cluster=\"c\",code=\"200\"} 3\n\
        tollgate_requests_total{code=\"200\",route=\"b\",cluster=\"c\"} 2\n\
        tollgate_requests_total_extra{route=\"a\"} 100\n\
        tollgate_up 1\n";

    #[test]
    fn sums_samples_with_the_labels() {
        assert_eq!(
            sample_sum(TEXT, "tollgate_requests_total", &[("cluster", "c")]),
            Some(5.0)
        );
        assert_eq!(
            sample_sum(TEXT, "tollgate_requests_total", &[("route", "a")]),
            Some(3.0)
        );
        assert_eq!(
            sample_sum(TEXT, "tollgate_requests_total", &[("route", "z")]),
            None
        );
        assert_eq!(sample_sum(TEXT, "tollgate_up", &[]), Some(1.0));
    }
}
