//! The heap the daemon's fetches leave behind: glibc's allocator is told to give large
//! buffers pages of their own (once, before any thread starts), and the heap an unpack
//! freed is handed back to the system when a fetch ends. Both are glibc's; elsewhere they
//! do nothing.

/// Keep large buffers out of the heap arenas: every allocation of 128 KiB or more (the
/// download's 256 KiB chunks, the unpacker's buffers) gets pages of its own, returned to the
/// system when it is freed. glibc would otherwise raise that threshold as such buffers
/// are freed, carve them from the arena of whichever thread ran the fetch (each fetch runs
/// on threads of its own), and keep them there: the daemon would grow by a few MiB with
/// every version it fetched.
///
/// # Safety
///
/// glibc's `mallopt` is not thread-safe: call this before the process starts any thread
/// (first thing in `main`), while no other code can be allocating.
pub unsafe fn large_buffers_unpooled() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: the caller guarantees that no other thread exists (see above); mallopt then
    // only changes the allocator's settings, with a valid parameter and value.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// Hand the heap an unpack freed back to the system. The tree of an archive being
/// unpacked and what it published are large and short-lived, allocated on the pool's
/// thread; once they are freed, glibc keeps most of those pages in that thread's arena
/// (it only trims the top of the main heap by itself), so that a daemon which unpacked a
/// few large versions would keep their peak for ever. A cached version itself costs its
/// index (read whole at load) and a few words.
pub(super) fn return_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes glibc's arena locks itself, so it is safe from any thread;
    // it only returns free pages of the allocator's own arenas to the system, and no
    // pointer of ours is involved. (nix has no wrapper for it.)
    unsafe {
        libc::malloc_trim(0);
    }
}
