//! `licensegate inject wait`: block until the sidecar's `/readyz` answers
//! 200. A classic (non-native) sidecar runs it as its `postStart` hook, and
//! the kubelet starts the app container only once the hook returns.
//!
//! Plain blocking HTTP/1.1 on loopback: no runtime, nothing to configure.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

const POLL: Duration = Duration::from_millis(200);
const IO_TIMEOUT: Duration = Duration::from_secs(1);

/// Poll `admin`'s `/readyz` until it answers 200 or `timeout` passes.
pub fn wait_ready(admin: SocketAddr, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match readyz_status(admin) {
            Ok(200) => return Ok(()),
            Ok(status) => format!("/readyz answered {status}"),
            Err(error) => error.to_string(),
        };
        if Instant::now() + POLL > deadline {
            return Err(format!(
                "licensegate at {admin} not ready within {}: {last}",
                humantime::format_duration(timeout)
            ));
        }
        std::thread::sleep(POLL);
    }
}

/// The status code of one `GET /readyz`.
fn readyz_status(admin: SocketAddr) -> std::io::Result<u16> {
    let mut stream = TcpStream::connect_timeout(&admin, IO_TIMEOUT)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    stream.write_all(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut head = Vec::with_capacity(64);
    let mut buf = [0u8; 64];
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 1024 {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    // "HTTP/1.1 200 OK"
    std::str::from_utf8(&head)
        .ok()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the admin port did not answer HTTP",
            )
        })
}
