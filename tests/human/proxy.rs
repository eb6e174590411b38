//! A recording TCP proxy between the browser and the study server: it keeps every
//! byte of every connection in both directions, so the test can check everything the
//! browser received, and it survives the server being killed and restarted on
//! another port (the browser keeps one address).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

/// One proxied connection: bytes sent to the server and bytes sent to the browser.
#[derive(Default)]
pub struct Recorded {
    pub to_server: Vec<u8>,
    pub to_browser: Vec<u8>,
}

pub struct Proxy {
    pub addr: SocketAddr,
    target: Arc<Mutex<SocketAddr>>,
    log: Arc<Mutex<Vec<Arc<Mutex<Recorded>>>>>,
}

fn pump(mut from: TcpStream, mut to: TcpStream, rec: Arc<Mutex<Recorded>>, to_browser: bool) {
    let mut buf = [0u8; 16384];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                {
                    let mut r = rec.lock().unwrap();
                    if to_browser {
                        r.to_browser.extend_from_slice(&buf[..n]);
                    } else {
                        r.to_server.extend_from_slice(&buf[..n]);
                    }
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}

impl Proxy {
    pub fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().unwrap();
        let target = Arc::new(Mutex::new(target));
        let log: Arc<Mutex<Vec<Arc<Mutex<Recorded>>>>> = Arc::default();
        let (t, l) = (target.clone(), log.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let to = *t.lock().unwrap();
                // A dead server: the browser sees the connection close.
                let Ok(server) = TcpStream::connect(to) else {
                    continue;
                };
                let rec = Arc::new(Mutex::new(Recorded::default()));
                l.lock().unwrap().push(rec.clone());
                let (c2, s2, r2) = (
                    client.try_clone().unwrap(),
                    server.try_clone().unwrap(),
                    rec.clone(),
                );
                std::thread::spawn(move || pump(c2, s2, r2, false));
                std::thread::spawn(move || pump(server, client, rec, true));
            }
        });
        Proxy { addr, target, log }
    }

    /// Points new connections at a restarted server.
    pub fn set_target(&self, to: SocketAddr) {
        *self.target.lock().unwrap() = to;
    }

    /// A copy of everything recorded so far, connection by connection.
    pub fn recorded(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .map(|r| {
                let r = r.lock().unwrap();
                (r.to_server.clone(), r.to_browser.clone())
            })
            .collect()
    }
}
