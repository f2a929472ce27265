//! Allocator tuning for the compute thread's pattern: many short-lived tensors of tens of kilobytes.

/// Keeps freed memory in the process instead of returning it to the kernel after every inner
/// loop. glibc's defaults trim the heap top and mmap/munmap mid-sized blocks, so each outer step
/// paid for fresh page faults on the same few hundred kilobytes; measured here, about 10% of a
/// sinusoid MAML step.
pub fn keep_freed_memory() {
    const MIB: i32 = 1 << 20;
    // SAFETY: mallopt only changes glibc's allocation thresholds; it is called before the
    // compute thread starts allocating.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 * MIB);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1024 * MIB);
        libc::mallopt(libc::M_TOP_PAD, 64 * MIB);
    }
}
