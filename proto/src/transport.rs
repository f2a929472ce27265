//! How large messages travel: the limits and HTTP/2 sizes both ends of a connection use.

/// The largest message accepted, in either direction: parameters of large models travel whole.
pub const MAX_MESSAGE_BYTES: usize = 1 << 30;
/// HTTP/2 flow-control window of each stream, both ways. Results carry gradients of megabytes
/// (one per task in multi-task learning): HTTP/2's default 64 KiB window would stall each
/// transfer on thousands of window updates.
pub const WINDOW_BYTES: u32 = 32 << 20;
/// The largest HTTP/2 frame the coordinator sends (HTTP/2 allows up to 16 MiB - 1; its
/// default is 16 KiB).
pub const MAX_FRAME_BYTES: u32 = 1 << 20;
