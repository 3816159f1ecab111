//! A plugin's heap: blocks of up to 1 KiB come off free lists of twenty size classes and go
//! back onto them; anything larger, or aligned to more than 16 bytes, is the backing
//! allocator's (dlmalloc in a plugin).
//!
//! Why: a request makes a plugin allocate small and short-lived things — each value the host
//! returns is written into a block the guest allocates for it (`proxy_on_memory_allocate`),
//! a context is boxed, a key or a header value is built — and frees most of them before its
//! callback returns. dlmalloc finds such a block in its bins, splits it and merges it back
//! with its neighbours when freed: about 35 instructions a `malloc` and as many a `free` in
//! the compiled guest, 1,500 to 1,700 a request in each of the bundled key-auth and
//! rate-limit. A free list takes one load and one store each way, and is inlined into
//! Rust's allocator entry points, so that an allocation also enters one guest function
//! fewer (the host's engine checks its CPU deadline on entry to every guest function).
//!
//! The price: a block is rounded up to its class (at most a quarter more than asked,
//! 16 bytes at least), and a freed block stays in its class for the next allocation of
//! that size instead of going back to the backing allocator: each class holds as many
//! blocks as the plugin ever had in use at once of that size (a guest's linear memory never
//! shrinks anyway). Blocks are carved from 16 KiB chunks of the backing allocator.
//!
//! A guest runs one callback at a time on one thread (`wasm32` without the `atomics`
//! feature), so the lists are plain pointers, with no lock. On other targets the type is
//! not `Sync` and cannot be a `#[global_allocator]`; the tests use it from one thread.

#![no_std]

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::ptr;

#[cfg(all(target_arch = "wasm32", target_feature = "atomics"))]
compile_error!("tollgate-heap's free lists take no lock: build guests without the atomics feature");

/// Every block starts on this boundary and is a multiple of it.
const GRANULE: usize = 16;

/// The largest block the size classes serve.
pub const LARGEST: usize = 1024;

/// The block sizes: steps of 16 bytes to 128, then four steps per doubling.
const SIZES: [usize; 20] = [
    16, 32, 48, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384, 448, 512, 640, 768, 896, 1024,
];

/// The class of every size, by its number of granules rounded up: the smallest class it
/// fits in.
const CLASS_OF: [u8; LARGEST / GRANULE + 1] = class_table();

const fn class_table() -> [u8; LARGEST / GRANULE + 1] {
    let mut table = [0; LARGEST / GRANULE + 1];
    let mut granules = 0;
    while granules < table.len() {
        let mut class = 0;
        while SIZES[class] < granules * GRANULE {
            class += 1;
        }
        table[granules] = class as u8;
        granules += 1;
    }
    table
}

/// What the size classes take from the backing allocator at a time.
const CHUNK: usize = 16 * 1024;

/// A free block: the next free block of its class.
struct Block {
    next: *mut Block,
}

struct Lists {
    free: [*mut Block; SIZES.len()],
    /// The part of the current chunk not yet carved into blocks.
    carve_from: *mut u8,
    carve_end: *mut u8,
}

/// Small blocks from size-class free lists, the rest from `B`.
pub struct SizeClasses<B> {
    backing: B,
    lists: UnsafeCell<Lists>,
}

// SAFETY: a guest built without the atomics feature has one thread, so the lists are never
// reached from two threads (the compile_error above rules the other case out).
#[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
unsafe impl<B: Sync> Sync for SizeClasses<B> {}

impl<B> SizeClasses<B> {
    pub const fn new(backing: B) -> Self {
        Self {
            backing,
            lists: UnsafeCell::new(Lists {
                free: [ptr::null_mut(); SIZES.len()],
                carve_from: ptr::null_mut(),
                carve_end: ptr::null_mut(),
            }),
        }
    }
}

/// The class that serves `layout`, if one does.
#[inline]
fn class_of(layout: Layout) -> Option<usize> {
    if layout.size() <= LARGEST && layout.align() <= GRANULE {
        Some(usize::from(CLASS_OF[layout.size().div_ceil(GRANULE)]))
    } else {
        None
    }
}

impl<B: GlobalAlloc> SizeClasses<B> {
    /// A new block of `class`, carved from the current chunk or a new one; null when the
    /// backing allocator has no chunk to give.
    #[cold]
    #[inline(never)]
    unsafe fn carve(&self, class: usize) -> *mut u8 {
        // SAFETY: one thread (see `Sync`), and no other reference to the lists is live.
        let lists = unsafe { &mut *self.lists.get() };
        let size = SIZES[class];
        let left = (lists.carve_end as usize).wrapping_sub(lists.carve_from as usize);
        if left < size {
            // SAFETY: `carve_from..carve_end` is the uncarved rest of a chunk (or empty).
            unsafe { Self::spill(lists, left) };
            let layout = Layout::from_size_align(CHUNK, GRANULE).expect("a valid layout");
            // SAFETY: a layout of non-zero size.
            let chunk = unsafe { self.backing.alloc(layout) };
            if chunk.is_null() {
                return chunk;
            }
            lists.carve_from = chunk;
            // SAFETY: the end of the chunk just allocated.
            lists.carve_end = unsafe { chunk.add(CHUNK) };
        }
        let block = lists.carve_from;
        // SAFETY: `size` bytes are left in the chunk (checked above).
        lists.carve_from = unsafe { block.add(size) };
        block
    }

    /// Puts the `left` bytes at `carve_from` on the free lists, as the largest blocks that
    /// fit, before a new chunk is taken: nothing of a chunk is lost.
    unsafe fn spill(lists: &mut Lists, mut left: usize) {
        while left >= GRANULE {
            // `left` is below the size of a class, so at most `LARGEST`.
            let mut class = usize::from(CLASS_OF[left / GRANULE]);
            if SIZES[class] > left {
                class -= 1;
            }
            let block = lists.carve_from.cast::<Block>();
            // SAFETY: the block lies in the uncarved, unused rest of the chunk.
            unsafe {
                block.write(Block {
                    next: lists.free[class],
                })
            };
            lists.free[class] = block;
            // SAFETY: within the chunk.
            lists.carve_from = unsafe { lists.carve_from.add(SIZES[class]) };
            left -= SIZES[class];
        }
        lists.carve_from = ptr::null_mut();
        lists.carve_end = ptr::null_mut();
    }
}

// SAFETY: a block of a class is `SIZES[class]` bytes, at least the layout's size, on a
// 16-byte boundary (chunks are, and every size is a multiple of 16), at least the layout's
// alignment; it is handed out once until freed. Other layouts are the backing allocator's.
// `dealloc` and `realloc` find the class from the layout, which callers pass as allocated.
unsafe impl<B: GlobalAlloc> GlobalAlloc for SizeClasses<B> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(class) = class_of(layout) else {
            // SAFETY: the caller's layout, passed on.
            return unsafe { self.backing.alloc(layout) };
        };
        // SAFETY: one thread (see `Sync`); the reference ends before `carve` makes its own.
        let lists = unsafe { &mut *self.lists.get() };
        let block = lists.free[class];
        if block.is_null() {
            // SAFETY: no reference to the lists is live.
            return unsafe { self.carve(class) };
        }
        // SAFETY: a block on a free list holds the link written when it was freed.
        lists.free[class] = unsafe { (*block).next };
        block.cast()
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let Some(class) = class_of(layout) else {
            // SAFETY: allocated by the backing allocator with this layout.
            return unsafe { self.backing.dealloc(ptr, layout) };
        };
        // SAFETY: one thread (see `Sync`).
        let lists = unsafe { &mut *self.lists.get() };
        let block = ptr.cast::<Block>();
        // SAFETY: the caller gives the block back: it is ours to write, aligned and at
        // least 16 bytes.
        unsafe {
            block.write(Block {
                next: lists.free[class],
            })
        };
        lists.free[class] = block;
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if class_of(layout).is_none() {
            // SAFETY: the caller's layout, passed on (dlmalloc knows fresh memory is zero).
            return unsafe { self.backing.alloc_zeroed(layout) };
        }
        // SAFETY: the caller's layout.
        let block = unsafe { self.alloc(layout) };
        if !block.is_null() {
            // SAFETY: the block has at least `layout.size()` bytes.
            unsafe { ptr::write_bytes(block, 0, layout.size()) };
        }
        block
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `new_size`, rounded up to the alignment, does not
        // overflow `isize`.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (class_of(layout), class_of(new_layout)) {
            // The block already has room for the new size.
            (Some(old), Some(new)) if old == new => ptr,
            // SAFETY: both the backing allocator's; the caller's arguments, passed on.
            (None, None) => unsafe { self.backing.realloc(ptr, layout, new_size) },
            _ => {
                // SAFETY: a layout the caller vouches for.
                let moved = unsafe { self.alloc(new_layout) };
                if !moved.is_null() {
                    // SAFETY: two live blocks, each with at least the bytes copied; the
                    // old one is ours to free once copied.
                    unsafe {
                        ptr::copy_nonoverlapping(ptr, moved, layout.size().min(new_size));
                        self.dealloc(ptr, layout);
                    }
                }
                moved
            }
        }
    }
}

#[cfg(test)]
// Every block the tests touch is one they were just given, with its layout.
#[allow(clippy::undocumented_unsafe_blocks)]
mod tests {
    extern crate std;

    use super::*;
    use std::alloc::System;
    use std::cell::Cell;
    use std::collections::BTreeMap;
    use std::vec::Vec;

    /// The system allocator, counting what it is asked.
    struct Counted {
        allocs: Cell<usize>,
        frees: Cell<usize>,
    }

    impl Counted {
        const fn new() -> Self {
            Self {
                allocs: Cell::new(0),
                frees: Cell::new(0),
            }
        }
    }

    unsafe impl GlobalAlloc for Counted {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            self.allocs.set(self.allocs.get() + 1);
            unsafe { System.alloc(layout) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            self.frees.set(self.frees.get() + 1);
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    /// A small deterministic generator (xorshift), so a failure repeats.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn every_size_fits_its_class_and_no_smaller_class() {
        for size in 0..=LARGEST {
            let class = class_of(Layout::from_size_align(size, 1).unwrap()).unwrap();
            assert!(
                SIZES[class] >= size,
                "size {size} in class of {}",
                SIZES[class]
            );
            assert!(
                class == 0 || SIZES[class - 1] < size,
                "size {size} could be smaller"
            );
            let granules = size.div_ceil(GRANULE) * GRANULE;
            assert!(
                SIZES[class] <= granules.max(GRANULE) || 4 * SIZES[class] <= 5 * size,
                "size {size} wastes more than a quarter"
            );
        }
        assert_eq!(
            class_of(Layout::from_size_align(LARGEST + 1, 1).unwrap()),
            None
        );
        assert_eq!(class_of(Layout::from_size_align(64, 32).unwrap()), None);
    }

    /// Random allocations, frees and reallocations of every size and alignment: no two live
    /// blocks overlap, every block is aligned, and every byte written is read back intact.
    #[test]
    fn live_blocks_never_overlap_and_keep_their_bytes() {
        let heap = SizeClasses::new(System);
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        // start → (size, align, fill byte); the starts again, to pick one at random
        let mut live: BTreeMap<usize, (usize, usize, u8)> = BTreeMap::new();
        let mut starts: Vec<usize> = Vec::new();
        let pick =
            |rng: &mut Rng, starts: &mut Vec<usize>| starts.swap_remove(rng.below(starts.len()));
        let check = |start: usize, (size, _, fill): (usize, usize, u8)| {
            let bytes = unsafe { core::slice::from_raw_parts(start as *const u8, size) };
            assert!(
                bytes.iter().all(|&b| b == fill),
                "block at {start:#x} was overwritten"
            );
        };
        for step in 0..200_000u32 {
            let fill = step as u8;
            // Up to a few thousand live blocks, freed more often than made beyond that.
            let choice = if live.len() > 3000 {
                5 + rng.below(5)
            } else {
                rng.below(10)
            };
            match choice {
                0..=4 => {
                    let size = match rng.below(8) {
                        0 => rng.below(4 * LARGEST),
                        _ => rng.below(LARGEST + 1),
                    };
                    let align = 1 << rng.below(7);
                    let layout = Layout::from_size_align(size.max(1), align).unwrap();
                    let p = unsafe { heap.alloc(layout) };
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "size {size} align {align}");
                    let start = p as usize;
                    if let Some((&before, &(len, _, _))) = live.range(..=start).next_back() {
                        assert!(before + len <= start, "overlaps the block at {before:#x}");
                    }
                    if let Some((&after, _)) = live.range(start..).next() {
                        assert!(
                            start + layout.size() <= after,
                            "overlaps the block at {after:#x}"
                        );
                    }
                    unsafe { ptr::write_bytes(p, fill, layout.size()) };
                    live.insert(start, (layout.size(), align, fill));
                    starts.push(start);
                }
                5..=7 if !live.is_empty() => {
                    let start = pick(&mut rng, &mut starts);
                    let block = live.remove(&start).unwrap();
                    check(start, block);
                    let layout = Layout::from_size_align(block.0, block.1).unwrap();
                    unsafe { heap.dealloc(start as *mut u8, layout) };
                }
                _ if !live.is_empty() => {
                    let start = pick(&mut rng, &mut starts);
                    let block = live.remove(&start).unwrap();
                    check(start, block);
                    let (size, align, old_fill) = block;
                    let new_size = rng.below(2 * LARGEST).max(1);
                    let layout = Layout::from_size_align(size, align).unwrap();
                    let p = unsafe { heap.realloc(start as *mut u8, layout, new_size) };
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0);
                    let kept = unsafe { core::slice::from_raw_parts(p, size.min(new_size)) };
                    assert!(kept.iter().all(|&b| b == old_fill), "realloc lost bytes");
                    unsafe { ptr::write_bytes(p, fill, new_size) };
                    live.insert(p as usize, (new_size, align, fill));
                    starts.push(p as usize);
                }
                _ => {}
            }
        }
        for (start, block) in live {
            check(start, block);
            unsafe {
                heap.dealloc(
                    start as *mut u8,
                    Layout::from_size_align(block.0, block.1).unwrap(),
                )
            };
        }
    }

    #[test]
    fn a_freed_block_is_the_next_one_of_its_class_and_chunks_are_few() {
        let heap = SizeClasses::new(Counted::new());
        let layout = Layout::from_size_align(40, 8).unwrap();
        let first = unsafe { heap.alloc(layout) };
        unsafe { heap.dealloc(first, layout) };
        // Any size of the same class (33 to 48 bytes) takes it.
        let again = unsafe { heap.alloc(Layout::from_size_align(48, 1).unwrap()) };
        assert_eq!(first, again);
        // A thousand requests' worth of small blocks, allocated and freed in turn, take one
        // chunk from the backing allocator.
        for _ in 0..1000 {
            let blocks: Vec<(*mut u8, Layout)> = [16, 100, 300, 1000, 24, 700]
                .into_iter()
                .map(|size| {
                    let layout = Layout::from_size_align(size, 1).unwrap();
                    (unsafe { heap.alloc(layout) }, layout)
                })
                .collect();
            for (block, layout) in blocks {
                unsafe { heap.dealloc(block, layout) };
            }
        }
        assert_eq!(heap.backing.allocs.get(), 1);
        // Larger blocks are the backing allocator's, each time.
        let big = Layout::from_size_align(LARGEST + 1, 1).unwrap();
        let p = unsafe { heap.alloc(big) };
        unsafe { heap.dealloc(p, big) };
        assert_eq!(
            (heap.backing.allocs.get(), heap.backing.frees.get()),
            (2, 1)
        );
    }

    #[test]
    fn the_rest_of_a_full_chunk_goes_to_the_free_lists() {
        let heap = SizeClasses::new(Counted::new());
        let layout = Layout::from_size_align(LARGEST, 1).unwrap();
        // 16 blocks of 1 KiB fill a chunk; the 17th takes another.
        let blocks: Vec<*mut u8> = (0..17).map(|_| unsafe { heap.alloc(layout) }).collect();
        assert_eq!(heap.backing.allocs.get(), 2);
        // 300-byte blocks (class 320) fill a chunk to 64 bytes of its end; those 64 bytes go
        // to the free lists when the next chunk is taken.
        let heap = SizeClasses::new(Counted::new());
        let small = Layout::from_size_align(300, 1).unwrap();
        let n = CHUNK / 320; // 51 blocks, 64 bytes left
        for _ in 0..n {
            unsafe { heap.alloc(small) };
        }
        assert_eq!(heap.backing.allocs.get(), 1);
        unsafe { heap.alloc(small) };
        assert_eq!(heap.backing.allocs.get(), 2);
        // The 64 bytes left serve a 64-byte block without a new chunk or carving.
        let lists = unsafe { &*heap.lists.get() };
        assert!(!lists.free[usize::from(CLASS_OF[4])].is_null());
        drop(blocks);
    }
}
