//! Calling the async store from blocking code.

use std::future::Future;

/// Runs `future` to completion from blocking code. On a multi-threaded tokio runtime (the
/// daemons', the AMs' and the tasks'), on that runtime: from a `spawn_blocking` thread
/// directly, from a worker thread after giving it up for the while (`block_in_place`). Else
/// on a thread and runtime of its own (a current-thread runtime's thread cannot block on it).
pub fn block_on<F>(future: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    if let Ok(handle) = tokio::runtime::Handle::try_current()
        && handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
    {
        return tokio::task::block_in_place(|| handle.block_on(future));
    }
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a tokio runtime starts")
                    .block_on(future)
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}
