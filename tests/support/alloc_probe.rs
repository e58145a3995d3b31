//! The largest single allocation a piece of code makes on the current thread: the fuzz
//! suites' check that a length declared in untrusted input cannot make a decoder reserve
//! more than the input could fill. Shared by the fuzz targets of every crate (`#[path]`).
//!
//! A test binary that includes this module installs [`Probe`] as its global allocator; it
//! only wraps the system allocator and records, per thread, the largest request made while
//! [`largest_allocation`] runs, so parallel tests do not see each other's allocations.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

pub struct Probe;

thread_local! {
    /// Some(largest request so far) while a measurement runs on this thread.
    static LARGEST: Cell<Option<usize>> = const { Cell::new(None) };
}

fn record(size: usize) {
    // `try_with`: the allocator may be called while the thread-local is being torn down.
    let _ = LARGEST.try_with(|l| {
        if let Some(max) = l.get() {
            l.set(Some(max.max(size)));
        }
    });
}

// SAFETY: every call is forwarded unchanged to `System`; the probe only reads the sizes.
unsafe impl GlobalAlloc for Probe {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(new_size);
        System.realloc(ptr, layout, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static PROBE: Probe = Probe;

/// Runs `f` and returns its result with the largest single allocation it made (bytes) on
/// this thread.
pub fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|l| l.set(Some(0)));
    let out = f();
    let largest = LARGEST.with(|l| l.replace(None)).unwrap_or(0);
    (out, largest)
}

/// The most a decoder may reserve for an input of `input_len` bytes: a fixed allowance
/// (serde caps a collection's up-front reservation at 1 MiB, and a hash map rounds that up)
/// plus a generous multiple of the input. A declared length of gigabytes is far beyond it.
pub fn allowance(input_len: usize) -> usize {
    4 * 1024 * 1024 + 64 * input_len
}
