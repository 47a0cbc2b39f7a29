//! Process exit statuses: every command's, in one place. Above 63 they are
//! BSD's `sysexits.h` codes, so a supervisor or script can tell a bad
//! configuration (fix the file) from a port in use (retry, or pick another).
//! A leaf: it imports nothing, and any module may use it.

/// Done: a drain finished, a check passed, a token is valid.
pub const SUCCESS: i32 = 0;

/// The command ran and the answer is no: a token that does not verify, a
/// policy with errors, a denied request, a workload that cannot be injected,
/// a refused plan switch, a sidecar not ready in time.
pub const FAILURE: i32 = 1;

/// A tool could not answer at all, because its own input cannot be read (a
/// token file); unlike [`FAILURE`], which is an answer.
pub const UNANSWERABLE: i32 = 2;

/// EX_USAGE: the configuration (file, flags, environment, TLS files, license
/// keys, policy) is wrong; found before any port is bound.
pub const CONFIG: i32 = 64;

/// EX_DATAERR: the input is not what the command reads (`inject patch` given
/// something that is not YAML).
pub const DATA: i32 = 65;

/// EX_UNAVAILABLE: the service the command talks to does not answer (`dev
/// switch` with no `licensegate dev` on the admin address).
pub const UNAVAILABLE: i32 = 69;

/// EX_SOFTWARE: a part of the running proxy that must not stop (the proxy
/// listener, the admin server, the signal handler) panicked or ended; the
/// process drained and exited rather than run half-alive.
pub const SOFTWARE: i32 = 70;

/// EX_OSERR: the operating system refused: a port cannot be bound, the
/// runtime or a working directory cannot be created.
pub const OS_ERROR: i32 = 71;

/// EX_IOERR: the output cannot be written.
pub const IO_ERROR: i32 = 74;

/// A second SIGTERM or SIGINT during a drain: exit at once, as the shell
/// reports a Ctrl-C (128 + SIGINT), whichever signal it was.
pub const SECOND_SIGNAL: i32 = 130;
