//! A client that names the vendor's real hostnames, run where it cannot reach them: in a
//! network namespace of its own (`unshare -rn`: a user and a network namespace, with
//! only a loopback interface, brought up by the child itself). The one way out is a
//! Unix socket in the test's directory, relayed by the test to keygate's TCP address:
//! inside the namespace a relay listens on 127.0.0.1 and forwards to that socket, and
//! the client is pointed at it (`HTTPS_PROXY=http://127.0.0.1:PORT`). Whatever the
//! client does with a vendor name, there is no route off the machine.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;

use super::tools::unavailable;

/// Runs first in the namespace's Python: brings `lo` up (SIOCSIFFLAGS), starts the relay
/// to the Unix socket `sys.argv[1]` on 127.0.0.1, puts its address in `KEYGATE_RELAY`,
/// then runs the script in `sys.argv[2]` with the remaining arguments.
const PRELUDE: &str = r#"
import fcntl, os, socket, struct, sys, threading
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
flags = struct.unpack("16sH", fcntl.ioctl(s, 0x8913, struct.pack("16sH", b"lo", 0)))[1]
fcntl.ioctl(s, 0x8914, struct.pack("16sH", b"lo", flags | 1))
s.close()
# The namespace has loopback and nothing else: no route can leave the machine.
interfaces = [line.split(":")[0].strip() for line in open("/proc/net/dev").read().splitlines()[2:]]
assert interfaces == ["lo"], "network namespace has interfaces %r" % interfaces
path, script = sys.argv[1], sys.argv[2]
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(16)
def pump(a, b):
    try:
        while True:
            data = a.recv(65536)
            if not data:
                break
            b.sendall(data)
    except OSError:
        pass
    for sock in (a, b):
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
def serve():
    while True:
        inner, _ = listener.accept()
        outer = socket.socket(socket.AF_UNIX)
        outer.connect(path)
        threading.Thread(target=pump, args=(inner, outer), daemon=True).start()
        threading.Thread(target=pump, args=(outer, inner), daemon=True).start()
threading.Thread(target=serve, daemon=True).start()
os.environ["KEYGATE_RELAY"] = "http://127.0.0.1:%d" % listener.getsockname()[1]
for name in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"):
    if os.environ.get(name) == "relay":
        os.environ[name] = os.environ["KEYGATE_RELAY"]
sys.argv = [script] + sys.argv[3:]
exec(compile(open(script).read(), script, "exec"))
"#;

/// Whether this machine can make the namespace (`unshare -rn`); says why not as
/// [`unavailable`] does.
pub fn available(test: &str) -> bool {
    let ok = Command::new("unshare")
        .args(["-rn", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok || unavailable(
        test,
        "`unshare -rn` cannot make a network namespace here (util-linux, user namespaces)",
    )
}

/// A command running `python` on `script` (with `args`) inside a fresh network
/// namespace whose only way out leads to `to`. In the child's environment, a proxy
/// variable set to `relay` is replaced by the relay's URL. `dir` holds the socket.
pub fn python(python: &Path, dir: &Path, script: &str, args: &[&str], to: SocketAddr) -> Command {
    let socket = dir.join("netns-relay.sock");
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket).expect("bind the relay's Unix socket");
    thread::spawn(move || relay(listener, to));
    let script_path = dir.join("netns-script.py");
    std::fs::write(&script_path, script).expect("write the script");
    let mut cmd = Command::new("unshare");
    cmd.arg("-rn").arg(python).arg("-c").arg(PRELUDE).arg(&socket).arg(&script_path).args(args);
    cmd
}

/// Each connection on `listener` is joined to a new TCP connection to `to`.
fn relay(listener: UnixListener, to: SocketAddr) {
    for inner in listener.incoming() {
        let Ok(inner) = inner else { return };
        let Ok(outer) = TcpStream::connect(to) else { continue };
        let (Ok(inner2), Ok(outer2)) = (inner.try_clone(), outer.try_clone()) else { continue };
        thread::spawn(move || pump(&inner, &outer, || outer.shutdown(Shutdown::Write)));
        thread::spawn(move || pump(&outer2, &inner2, || inner2.shutdown(Shutdown::Write)));
    }
}

/// Copies `from` to `to` until either ends, then half-closes `to`.
fn pump(mut from: impl Read, mut to: impl Write, close: impl FnOnce() -> std::io::Result<()>) {
    let mut buf = [0u8; 16 * 1024];
    while let Ok(n @ 1..) = from.read(&mut buf) {
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = close();
}
