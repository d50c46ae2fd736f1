//! What a `no_std` wasm32 component needs besides its bindings, for the
//! hostile modules that are written from `wit/policy.wit` with `wit-bindgen`
//! alone (not the SDK): an allocator, a panic handler (a trap) and the two
//! libc functions the compiler emits calls to, and the canonical ABI's
//! `cabi_realloc`. Natively it is empty, so the crates still build and test.
#![no_std]

#[cfg(target_arch = "wasm32")]
mod rt {
    use core::alloc::{GlobalAlloc, Layout};

    /// Never frees: an instance serves one call.
    struct Bump;

    static mut NEXT: usize = 0;
    static mut END: usize = 0;

    // SAFETY: single-threaded wasm.
    unsafe impl GlobalAlloc for Bump {
        unsafe fn alloc(&self, l: Layout) -> *mut u8 {
            // SAFETY: NEXT/END are only touched here, single-threaded.
            unsafe {
                let align = l.align();
                let mut start = (NEXT + align - 1) & !(align - 1);
                if start + l.size() > END {
                    let pages = (l.size() + align).div_ceil(0x10000);
                    let prev = core::arch::wasm32::memory_grow(0, pages);
                    if prev == usize::MAX {
                        return core::ptr::null_mut();
                    }
                    if END != prev * 0x10000 {
                        NEXT = prev * 0x10000;
                        start = (NEXT + align - 1) & !(align - 1);
                    }
                    END = (prev + pages) * 0x10000;
                }
                NEXT = start + l.size();
                start as *mut u8
            }
        }

        unsafe fn dealloc(&self, _: *mut u8, _: Layout) {}
    }

    #[global_allocator]
    static ALLOC: Bump = Bump;

    /// The canonical ABI's allocation hook (the host passes strings and
    /// lists in through it).
    ///
    /// # Safety
    /// Called by the host per the canonical ABI.
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn cabi_realloc(
        old: *mut u8,
        old_len: usize,
        align: usize,
        new_len: usize,
    ) -> *mut u8 {
        if new_len == 0 {
            return align as *mut u8;
        }
        // SAFETY: align comes from the canonical ABI (a power of two); the
        // copy stays within both allocations.
        unsafe {
            let p = ALLOC.alloc(Layout::from_size_align_unchecked(new_len, align));
            if p.is_null() {
                core::arch::wasm32::unreachable();
            }
            if !old.is_null() && old_len > 0 {
                core::ptr::copy_nonoverlapping(old, p, old_len.min(new_len));
            }
            p
        }
    }

    #[panic_handler]
    fn panic(_: &core::panic::PanicInfo) -> ! {
        core::arch::wasm32::unreachable()
    }

    /// `memcmp`.
    ///
    /// # Safety
    /// `a` and `b` must be valid for `n` bytes.
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
        for i in 0..n {
            // SAFETY: the caller guarantees n readable bytes.
            let (x, y) = unsafe { (*a.add(i), *b.add(i)) };
            if x != y {
                return i32::from(x) - i32::from(y);
            }
        }
        0
    }

    /// `bcmp`.
    ///
    /// # Safety
    /// As for [`memcmp`].
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
        // SAFETY: same contract.
        unsafe { memcmp(a, b, n) }
    }
}
