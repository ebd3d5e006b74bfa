//! Writing to stdout without `println!`'s panic when the reader has gone (`spindle apps | head`):
//! output nobody reads is dropped, and the command finishes as it would have.

use std::io::Write;

/// Writes to stdout, ignoring errors: the only one that happens in practice is a closed pipe.
pub fn write_stdout(args: std::fmt::Arguments) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_fmt(args).and_then(|()| stdout.flush());
}

/// `print!` that never panics.
macro_rules! out {
    ($($arg:tt)*) => { $crate::output::write_stdout(format_args!($($arg)*)) };
}

/// `println!` that never panics.
macro_rules! outln {
    () => { $crate::output::write_stdout(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::output::write_stdout(format_args!("{}\n", format_args!($($arg)*))) };
}
