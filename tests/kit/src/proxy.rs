//! A TCP proxy on a loopback port that can cut its connections: once the server side has sent
//! `cut_after` bytes in total (over every connection), the connection carrying that byte is
//! closed in both directions, mid-answer (e.g. in the middle of a RETR), as a dropped
//! connection or a killed server process would. Later connections pass untouched.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// The running proxy; stops accepting when dropped.
pub struct CutProxy {
    /// The loopback port to connect to instead of the target.
    pub port: u16,
    stop: Arc<AtomicBool>,
    cut: Arc<AtomicBool>,
}

impl CutProxy {
    /// Forwards `127.0.0.1:<port>` to `127.0.0.1:<target>`, cutting once `cut_after` bytes came
    /// from the target.
    #[must_use]
    pub fn start(target: u16, cut_after: u64) -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("local addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let cut = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        {
            let (stop, cut) = (stop.clone(), cut.clone());
            std::thread::spawn(move || {
                for client in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(client) = client else { continue };
                    let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                        continue;
                    };
                    let (c2, s2) = (
                        client.try_clone().expect("clone"),
                        server.try_clone().expect("clone"),
                    );
                    // Client to server: plain copy.
                    std::thread::spawn(move || {
                        let (mut from, mut to) = (c2, s2);
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(Shutdown::Write);
                    });
                    let (sent, cut) = (sent.clone(), cut.clone());
                    std::thread::spawn(move || {
                        let (mut from, mut to) = (server, client);
                        let mut buf = [0u8; 4096];
                        loop {
                            let n = match from.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            let before = sent.fetch_add(n as u64, Ordering::SeqCst);
                            if !cut.load(Ordering::SeqCst) && before + n as u64 >= cut_after {
                                let keep = usize::try_from(cut_after.saturating_sub(before))
                                    .unwrap_or(usize::MAX);
                                let _ = to.write_all(&buf[..keep.min(n)]);
                                cut.store(true, Ordering::SeqCst);
                                let _ = to.shutdown(Shutdown::Both);
                                let _ = from.shutdown(Shutdown::Both);
                                return;
                            }
                            if to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(Shutdown::Both);
                    });
                }
            });
        }
        CutProxy { port, stop, cut }
    }

    /// Whether the cut has happened.
    #[must_use]
    pub fn has_cut(&self) -> bool {
        self.cut.load(Ordering::SeqCst)
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}
