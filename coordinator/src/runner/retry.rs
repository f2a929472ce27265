//! A run's writes tried again, with growing pauses, before the run pauses: a full disk or a descriptor shortage may pass, and pausing a long run over one failed write costs more than waiting.

use std::io;
use std::time::Duration;

/// Tries of a write before its error is returned (and the run pauses).
const TRIES: u32 = 4;
/// The pause after the first failed try; each later pause is twice the one before.
const FIRST_PAUSE: Duration = Duration::from_millis(500);

/// `write` until it succeeds or has failed [`TRIES`] times, then its last error. `what` names
/// the write in the warnings. For the async runtime: the pauses do not hold up its thread
/// (the writes themselves must be short).
pub(super) async fn retrying<T>(
    id: &str,
    what: &str,
    mut write: impl FnMut() -> io::Result<T>,
) -> io::Result<T> {
    let mut tries = Tries::new(FIRST_PAUSE, id, what);
    loop {
        match write() {
            Err(e) => match tries.after(&e) {
                Some(pause) => tokio::time::sleep(pause).await,
                None => return Err(e),
            },
            done => return done,
        }
    }
}

/// [`retrying`] for a blocking thread, where the pauses are sleeps.
pub(super) fn retrying_blocking<T>(
    id: &str,
    what: &str,
    write: impl FnMut() -> io::Result<T>,
) -> io::Result<T> {
    blocking_from(FIRST_PAUSE, id, what, write)
}

/// [`retrying_blocking`] whose first pause is `pause`.
fn blocking_from<T>(
    pause: Duration,
    id: &str,
    what: &str,
    mut write: impl FnMut() -> io::Result<T>,
) -> io::Result<T> {
    let mut tries = Tries::new(pause, id, what);
    loop {
        match write() {
            Err(e) => match tries.after(&e) {
                Some(pause) => std::thread::sleep(pause),
                None => return Err(e),
            },
            done => return done,
        }
    }
}

/// The schedule both forms follow: [`TRIES`] tries, each failure but the last warned of and
/// followed by a pause twice the one before.
struct Tries<'a> {
    id: &'a str,
    what: &'a str,
    done: u32,
    pause: Duration,
}

impl<'a> Tries<'a> {
    fn new(first_pause: Duration, id: &'a str, what: &'a str) -> Self {
        Tries {
            id,
            what,
            done: 0,
            pause: first_pause,
        }
    }

    /// After a failed try with `error`: the pause before the next, or `None` after the last.
    fn after(&mut self, error: &io::Error) -> Option<Duration> {
        self.done += 1;
        if self.done >= TRIES {
            return None;
        }
        let (id, what, try_) = (self.id, self.what, self.done);
        tracing::warn!(%id, %error, try_, "cannot write {what}; trying again");
        let pause = self.pause;
        self.pause *= 2;
        Some(pause)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// A write that fails its first `failures` tries; counts the tries.
    fn flaky(failures: u32, tries: &Cell<u32>) -> io::Result<u32> {
        tries.set(tries.get() + 1);
        if tries.get() <= failures {
            Err(io::Error::other("too many open files"))
        } else {
            Ok(tries.get())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_that_fails_for_a_while_is_tried_again_after_growing_pauses() {
        let tries = Cell::new(0);
        let started = tokio::time::Instant::now();
        let done = retrying("exp-1", "a file", || flaky(3, &tries)).await;
        assert_eq!(done.unwrap(), 4, "the fourth try succeeds");
        // 0.5 s, 1 s and 2 s between the four tries (the clock is the test's own).
        assert_eq!(started.elapsed(), Duration::from_millis(3500));
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_that_keeps_failing_returns_its_error_after_the_last_try() {
        let tries = Cell::new(0);
        let done = retrying("exp-1", "a file", || flaky(u32::MAX, &tries)).await;
        assert_eq!(done.unwrap_err().to_string(), "too many open files");
        assert_eq!(tries.get(), TRIES);
    }

    #[test]
    fn the_blocking_form_tries_as_often_and_stops_at_the_first_success() {
        // Real sleeps here: the pauses are left out.
        let tries = Cell::new(0);
        let once = blocking_from(Duration::ZERO, "exp-1", "a file", || flaky(1, &tries));
        assert_eq!(once.unwrap(), 2);
        let tries = Cell::new(0);
        let never = blocking_from(Duration::ZERO, "exp-1", "a file", || {
            flaky(u32::MAX, &tries)
        });
        assert!(never.is_err());
        assert_eq!(tries.get(), TRIES);
    }
}
