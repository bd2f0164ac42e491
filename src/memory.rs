//! The daemon's heap and the OS: how much of it glibc's allocator keeps.
//!
//! Loading thousands of programs allocates and frees far more than the daemon keeps (documents,
//! scans, plans), and glibc keeps freed memory in per-thread arenas rather than returning it: at
//! 10 000 programs the daemon's RSS was more than twice its live heap. So the daemon keeps one
//! arena (its allocations are few outside loading, and one arena held less free memory than two at
//! 10 000 programs and at 1000 running) and trims the heap once a load, a reload or a burst of the
//! reconcile loop has settled, and once a large response has been sent ([`ReleasedOnDrop`];
//! `docs/benchmarks.md`, memory). [`Allocator`], the binary's global allocator, is glibc's malloc
//! but for large zeroed blocks, which it maps fresh from the kernel.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Limits glibc's malloc arenas; call before any thread starts.
pub fn limit_arenas() {
    // SAFETY: `mallopt` only sets an allocator parameter; it is called before the runtime
    // starts any thread, with a valid parameter and value.
    #[allow(unsafe_code)]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Returns freed heap memory to the OS. A few milliseconds for a large heap: called after a
/// load or a reload, never on a hot path.
pub fn release_freed() {
    // SAFETY: `malloc_trim` walks the allocator's own free lists under its locks; it takes no
    // pointer of ours.
    #[allow(unsafe_code)]
    unsafe {
        libc::malloc_trim(0);
    }
}

/// A large buffer (a response body) whose memory goes back to the OS once it is dropped: a
/// response of thousands of programs is megabytes that would otherwise stay resident, freed
/// in the middle of the heap after it was sent.
pub struct ReleasedOnDrop(Vec<u8>);

impl ReleasedOnDrop {
    /// From this many bytes on a buffer is worth the trim (a few milliseconds).
    pub const LARGE: usize = 1 << 20;

    pub fn new(bytes: Vec<u8>) -> ReleasedOnDrop {
        ReleasedOnDrop(bytes)
    }
}

impl AsRef<[u8]> for ReleasedOnDrop {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for ReleasedOnDrop {
    fn drop(&mut self) {
        drop(std::mem::take(&mut self.0));
        release_freed();
    }
}

/// glibc's malloc, except that a zeroed block of [`Allocator::LAZY_FROM`] bytes or more is a
/// mapping of its own, whose pages the kernel supplies zeroed when they are first touched.
///
/// glibc clears such a block when it reuses heap memory for it, which makes every page of it
/// resident. The store allocates its page table in zeroed 512 KiB slabs and touches a few pages
/// of each: cleared in the heap, they held 4–5 MiB at 1000 running programs (`docs/benchmarks.md`,
/// memory). glibc's own mapping threshold cannot be lowered for this alone: it would map the
/// store's compression context on every flush too, and every large plan vector.
pub struct Allocator;

/// The blocks mapped by [`Allocator`], by address (0: a free slot). Only zeroed blocks of
/// `LAZY_FROM` bytes or more are here, a handful at a time; when every slot is taken a block
/// comes from glibc.
static MAPPED: [AtomicUsize; 64] = [const { AtomicUsize::new(0) }; 64];

impl Allocator {
    /// The size from which a zeroed block gets a mapping of its own.
    pub const LAZY_FROM: usize = 256 * 1024;

    /// Whether `ptr` is one of ours; forgets it when `take`.
    fn mapped(ptr: *mut u8, take: bool) -> bool {
        let addr = ptr as usize;
        MAPPED.iter().any(|slot| match take {
            true => slot
                .compare_exchange(addr, 0, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok(),
            false => slot.load(Ordering::Acquire) == addr,
        })
    }

    /// A fresh zeroed mapping for `layout`, recorded; `None` when it cannot be had or recorded.
    fn map(layout: Layout) -> Option<*mut u8> {
        if layout.align() > rustix::param::page_size() {
            return None;
        }
        // SAFETY: an anonymous private mapping at an address of the kernel's choosing touches no
        // memory of ours.
        #[allow(unsafe_code)]
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                layout.size(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return None;
        }
        let addr = ptr as usize;
        let recorded = MAPPED.iter().any(|slot| {
            slot.compare_exchange(0, addr, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        });
        if !recorded {
            unmap(ptr.cast(), layout.size());
            return None;
        }
        Some(ptr.cast())
    }
}

fn unmap(ptr: *mut u8, size: usize) {
    // SAFETY: called only for a mapping of `size` bytes made by `Allocator::map` that nothing
    // refers to any more.
    #[allow(unsafe_code)]
    unsafe {
        libc::munmap(ptr.cast(), size);
    }
}

// SAFETY: every block comes from glibc's malloc (through `System`) or from `mmap` and goes back
// the same way: a block is ours exactly when its address is recorded in `MAPPED`, which only
// mapped blocks are, from their mapping until they are unmapped.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is `GlobalAlloc::alloc`'s, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() >= Self::LAZY_FROM {
            if let Some(ptr) = Self::map(layout) {
                return ptr;
            }
        }
        // SAFETY: as in `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if layout.size() >= Self::LAZY_FROM && Self::mapped(ptr, true) {
            return unmap(ptr, layout.size());
        }
        // SAFETY: `ptr` is not ours, so glibc's, with the layout it was allocated with.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if layout.size() < Self::LAZY_FROM || !Self::mapped(ptr, false) {
            // SAFETY: `ptr` is glibc's, with the layout it was allocated with.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // SAFETY: the caller guarantees a valid size for this alignment.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: a new block from glibc, then the old contents copied into it before the old
        // mapping is released; the two do not overlap.
        unsafe {
            let new = System.alloc(new_layout);
            if !new.is_null() {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            new
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tests that map blocks run one at a time: the kernel may hand a block's address, just
    /// released by one test, to the next mapping of another, and each checks what is recorded.
    static MAPPING: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
        MAPPING
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How many of the pages from `ptr` on are resident (`mincore`).
    fn resident_pages(ptr: *mut u8, size: usize) -> usize {
        let page = rustix::param::page_size();
        let mut vec = vec![0u8; size.div_ceil(page)];
        // SAFETY: `ptr` is page-aligned and starts a mapping of `size` bytes; `vec` has a byte
        // for each of its pages.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::mincore(ptr.cast(), size, vec.as_mut_ptr()) };
        assert_eq!(rc, 0, "mincore: {}", std::io::Error::last_os_error());
        vec.iter().filter(|&&b| b & 1 == 1).count()
    }

    #[test]
    #[allow(unsafe_code)]
    fn a_large_zeroed_block_is_resident_only_where_written() {
        let _serial = one_at_a_time();
        let size = 512 * 1024;
        let layout = Layout::from_size_align(size, 8).unwrap();
        // SAFETY: the layout has a non-zero size; the block is written inside its bounds and
        // released with the same layout.
        unsafe {
            let ptr = Allocator.alloc_zeroed(layout);
            assert!(Allocator::mapped(ptr, false), "a mapping of its own");
            assert_eq!(resident_pages(ptr, size), 0);
            *ptr.add(size / 2) = 7;
            assert_eq!(resident_pages(ptr, size), 1);
            assert!(std::slice::from_raw_parts(ptr, size)
                .iter()
                .enumerate()
                .all(|(i, &b)| b == if i == size / 2 { 7 } else { 0 }));
            Allocator.dealloc(ptr, layout);
            assert!(!Allocator::mapped(ptr, false), "forgotten once released");
        }
    }

    #[test]
    #[allow(unsafe_code)]
    fn a_mapped_block_keeps_its_contents_when_it_grows_or_shrinks() {
        let _serial = one_at_a_time();
        let layout = Layout::from_size_align(Allocator::LAZY_FROM, 8).unwrap();
        for new_size in [Allocator::LAZY_FROM * 2, 100] {
            // SAFETY: as above; `realloc` gets the block's own layout and a non-zero size.
            unsafe {
                let ptr = Allocator.alloc_zeroed(layout);
                assert!(Allocator::mapped(ptr, false));
                *ptr = 1;
                *ptr.add(99) = 2;
                let grown = Allocator.realloc(ptr, layout, new_size);
                assert!(!Allocator::mapped(ptr, false));
                assert_eq!((*grown, *grown.add(99), *grown.add(50)), (1, 2, 0));
                Allocator.dealloc(grown, Layout::from_size_align(new_size, 8).unwrap());
            }
        }
    }

    #[test]
    #[allow(unsafe_code)]
    fn small_and_uncleared_blocks_stay_with_glibc() {
        let _serial = one_at_a_time();
        for (size, zeroed) in [(1024, true), (Allocator::LAZY_FROM, false)] {
            let layout = Layout::from_size_align(size, 8).unwrap();
            // SAFETY: as above.
            unsafe {
                let ptr = match zeroed {
                    true => Allocator.alloc_zeroed(layout),
                    false => Allocator.alloc(layout),
                };
                assert!(!Allocator::mapped(ptr, false));
                let ptr = Allocator.realloc(ptr, layout, size * 2);
                Allocator.dealloc(ptr, Layout::from_size_align(size * 2, 8).unwrap());
            }
        }
    }
}
