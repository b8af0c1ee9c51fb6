//! A real `redis-server` on 127.0.0.1, started for one test and killed (by its pid) on
//! drop; skipped with a message (or failed, with `KEYGATE_REQUIRE_TOOLS=1`) when the
//! Debian package `redis-server` is not installed.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::tools::have_tool;

/// A running redis-server.
pub struct Redis {
    child: Child,
    pub port: u16,
}

impl Redis {
    /// Starts one, or `None` (after saying why) when redis-server is missing.
    pub fn start(test: &str) -> Option<Redis> {
        if !have_tool(
            test,
            "redis-server",
            "apt-get install redis-server",
            Command::new("redis-server").arg("--version"),
        ) {
            return None;
        }
        // redis-server cannot take port 0: take a free port and hand it over, again if
        // another process took it in between.
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let child = Command::new("redis-server")
                .args([
                    "--bind",
                    "127.0.0.1",
                    "--port",
                    &port.to_string(),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn redis-server");
            let mut redis = Redis { child, port };
            if redis.ready(Duration::from_secs(10)) {
                return Some(redis);
            }
            let _ = redis.child.kill();
        }
        panic!("redis-server did not start");
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn ready(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return false;
            }
            if let Ok(mut conn) = redis::Client::open(self.url()).and_then(|c| c.get_connection()) {
                if redis::cmd("PING").query::<String>(&mut conn).is_ok() {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Every key and its value (strings only, which is all keygate writes).
    pub fn dump(&self) -> Vec<(String, Vec<u8>)> {
        let mut conn = redis::Client::open(self.url()).unwrap().get_connection().unwrap();
        let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut conn).unwrap();
        keys.into_iter()
            .map(|k| {
                let value: Option<Vec<u8>> = redis::cmd("GET").arg(&k).query(&mut conn).unwrap();
                (k, value.unwrap_or_default())
            })
            .collect()
    }

    /// Kills the server now (the test goes on without it).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}
