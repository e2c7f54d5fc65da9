//! Test harness: a temp dir with a config file and a SQLite store, and a
//! runner for the real `keygate` binary.

pub mod browser;
pub mod chaos;
pub mod gateway;
pub mod pg;
pub mod redis;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Argon2 parameters small enough to keep tests fast (the real sets are
/// measured in benches, not here).
pub const FAST_HASH: &str = r#"
[keys.hash.generated]
memory_kib = 64
iterations = 1
parallelism = 1

[keys.hash.imported]
memory_kib = 64
iterations = 1
parallelism = 1
"#;

/// A temp dir holding `keygate.toml` and the store it points at.
pub struct Sandbox {
    dir: tempfile::TempDir,
}

/// The result of one run of the binary.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// stdout parsed as one JSON value.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout))
    }

    /// Asserts the exit code, showing the output on failure.
    pub fn expect(self, code: i32) -> Self {
        assert_eq!(
            self.code, code,
            "exit code {} (want {code})\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        );
        self
    }
}

impl From<Output> for Run {
    fn from(out: Output) -> Self {
        Self {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl Sandbox {
    /// A sandbox whose config is the SQLite store in the dir plus `extra` TOML.
    pub fn new(extra: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let sandbox = Self { dir };
        let db = sandbox.path().join("keygate.db");
        sandbox.write_config(&format!(
            "[database]\nurl = \"sqlite://{}?mode=rwc\"\n{FAST_HASH}\n{extra}",
            db.display()
        ));
        sandbox
    }

    /// The dir.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The config file path.
    pub fn config(&self) -> PathBuf {
        self.path().join("keygate.toml")
    }

    /// Replaces the config file.
    pub fn write_config(&self, text: &str) {
        std::fs::write(self.config(), text).expect("write config");
    }

    /// Writes a file in the dir and returns its path.
    pub fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path().join(name);
        std::fs::write(&path, text).expect("write file");
        path
    }

    /// Runs `keygate --config <sandbox config> args…`.
    pub fn run(&self, args: &[&str]) -> Run {
        self.run_with_env(args, &[])
    }

    /// Like `run`, with extra environment variables.
    pub fn run_with_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut cmd = keygate();
        cmd.arg("--config").arg(self.config()).args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("run keygate").into()
    }
}

/// The binary under test, with no inherited KEYGATE_ settings.
pub fn keygate() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keygate"));
    for (name, _) in std::env::vars() {
        if name.starts_with("KEYGATE_") || name == "RUST_LOG" {
            cmd.env_remove(name);
        }
    }
    cmd
}

/// A free loopback port (bound and released; the gateway binds it next).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A sandbox for `keygate serve`: an echo upstream, free proxy and admin
/// ports, JSON logs at `level`, `keys.default_plan = "pro"`, then `extra`
/// TOML. Keep the echo server alive as long as the gateway.
pub async fn serve_sandbox(
    level: &str,
    extra: &str,
) -> (Sandbox, keygate::echo::EchoServer, std::net::SocketAddr) {
    let echo = keygate::echo::EchoServer::start(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let (port, admin_port) = (free_port(), free_port());
    let sb = Sandbox::new(&format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin_port}\"\n\
         [upstream]\nurl = \"http://{}\"\n[log]\nformat = \"json\"\nlevel = \"{level}\"\n\
         [keys]\ndefault_plan = \"pro\"\n{extra}",
        echo.addr()
    ));
    (sb, echo, ([127, 0, 0, 1], port).into())
}

/// `keygate serve` running as a process on a sandbox's config, its stderr
/// (the logs) captured.
pub struct Served {
    child: std::process::Child,
}

impl Served {
    /// Starts `keygate serve` and waits until `proxy` accepts connections.
    pub async fn start(sb: &Sandbox, proxy: std::net::SocketAddr) -> Self {
        let mut child = keygate()
            .args(["--config", sb.config().to_str().unwrap(), "serve"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(proxy).await.is_ok() {
                return Self { child };
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("keygate serve did not start listening on {proxy}");
    }

    /// Sends SIGTERM and waits for the exit: the exit code and every log
    /// line written.
    pub async fn stop(mut self) -> (Option<i32>, String) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        tokio::task::spawn_blocking(move || {
            use std::io::Read as _;
            let code = self.child.wait().unwrap();
            let mut logs = String::new();
            self.child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut logs)
                .unwrap();
            (code.code(), logs)
        })
        .await
        .unwrap()
    }
}

/// Replaces the last 6 characters of a base62 key so its checksum is valid.
pub fn with_valid_checksum(unsigned: &str) -> Option<String> {
    let signed = &unsigned[..unsigned.len() - 6];
    let crc = crc32fast_hash(signed.as_bytes());
    const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut out = [b'0'; 6];
    let mut n = u64::from(crc);
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(n % 62) as usize];
        n /= 62;
    }
    let candidate = format!("{signed}{}", String::from_utf8_lossy(&out));
    keygate::keys::format::parse_generated(&candidate)
        .ok()
        .map(|_| candidate)
}

fn crc32fast_hash(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}
