//! Calling the async store from blocking code.

use std::future::Future;
use std::sync::OnceLock;

/// Runs the requests of threads that have no runtime of their own (stream instances, read-ahead
/// threads): one small runtime per process, so clients keep their pooled connections.
fn shared_runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("storage-io")
            .enable_all()
            .build()
            .expect("a tokio runtime starts")
    })
}

/// Runs `future` to completion from blocking code. On a multi-threaded tokio runtime (the
/// daemons', the AMs' and the tasks'), on that runtime: from a `spawn_blocking` thread
/// directly, from a worker thread after giving it up for the while (`block_in_place`). A
/// thread with no runtime uses the process's shared one; a current-thread runtime's own thread
/// (which cannot block) hands the future to another thread that does.
pub fn block_on<F>(future: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(|| handle.block_on(future))
        }
        Ok(_) => std::thread::scope(|scope| {
            scope
                .spawn(|| shared_runtime().block_on(future))
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        }),
        Err(_) => shared_runtime().block_on(future),
    }
}
