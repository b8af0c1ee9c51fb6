//! Test-only: the unit tests' allocator, which can tell whether memory freed on this
//! thread still held a given byte string — how the tests show that a key leaves no copy
//! behind ([`crate::secret::Wiped`]).
//!
//! It is the system allocator, plus one check on each free while a thread watches: the
//! freed block is searched for the watched bytes before it goes back.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

#[global_allocator]
static ALLOCATOR: Watching = Watching;

/// The longest string a thread can watch for.
const MAX_WATCHED: usize = 64;

thread_local! {
    /// What this thread watches for (its length, then its bytes); length 0: nothing.
    static WATCHED: Cell<(usize, [u8; MAX_WATCHED])> = const { Cell::new((0, [0; MAX_WATCHED])) };
    /// Freed blocks that held it, since the watch began.
    static HELD: Cell<usize> = const { Cell::new(0) };
}

struct Watching;

// SAFETY: every call is passed on to `System` unchanged; the check only reads a block
// that is still allocated.
unsafe impl GlobalAlloc for Watching {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if let Ok((len, bytes)) = WATCHED.try_with(Cell::get) {
            if len > 0 {
                // SAFETY: `ptr` is a live block of `layout.size()` bytes until the call below.
                let block = unsafe { std::slice::from_raw_parts(ptr, layout.size()) };
                if block.windows(len).any(|w| w == &bytes[..len]) {
                    let _ = HELD.try_with(|held| held.set(held.get() + 1));
                }
            }
        }
        // SAFETY: as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// How many blocks freed on this thread while `work` ran still held `watched`.
pub(crate) fn holding(watched: &[u8], work: impl FnOnce()) -> usize {
    assert!(!watched.is_empty() && watched.len() <= MAX_WATCHED);
    let mut bytes = [0; MAX_WATCHED];
    bytes[..watched.len()].copy_from_slice(watched);
    HELD.set(0);
    WATCHED.set((watched.len(), bytes));
    work();
    WATCHED.set((0, [0; MAX_WATCHED]));
    HELD.get()
}
