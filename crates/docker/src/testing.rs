//! Test support for anything that needs real containers without a registry: a local
//! busybox image built from the host's `/bin/busybox` (Debian: `apt-get install -y
//! busybox-static`), and a guard that removes a test's containers and volumes even when
//! the test fails.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;

/// The image tests run: busybox with its applets linked into `/bin`.
pub const TEST_IMAGE: &str = "flotilla-test/busybox:latest";
/// Where the static busybox binary is expected.
pub const BUSYBOX_PATH: &str = "/bin/busybox";
const APPLETS: &[&str] = &[
    "sh", "ash", "sleep", "usleep", "echo", "cat", "wget", "nc", "httpd", "true", "false", "kill",
    "test", "[", "touch", "rm", "dd", "head", "tail", "ls", "mkdir", "env", "id", "hostname", "ps",
    "grep", "printf", "date",
];

static BUILT: Mutex<bool> = Mutex::new(false);

fn docker(args: &[&str]) -> Result<std::process::Output, String> {
    Command::new("docker")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run the docker CLI: {e}"))
}

fn build(rootfs: &Path) -> Result<(), String> {
    let io = |e: std::io::Error| {
        format!(
            "building the test image rootfs in {}: {e}",
            rootfs.display()
        )
    };
    let _ = std::fs::remove_dir_all(rootfs);
    for dir in ["bin", "tmp", "www", "etc", "data"] {
        std::fs::create_dir_all(rootfs.join(dir)).map_err(io)?;
    }
    std::fs::copy(BUSYBOX_PATH, rootfs.join("bin/busybox")).map_err(io)?;
    for applet in APPLETS {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).map_err(io)?;
    }
    std::fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n",
    )
    .map_err(io)?;
    let script = format!(
        "tar -C '{}' -c . | docker import - {TEST_IMAGE}",
        rootfs.display()
    );
    let output = Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run sh: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "docker import failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(())
}

/// Makes [`TEST_IMAGE`] present, building it once if Docker does not have it.
pub fn ensure_test_image() -> Result<&'static str, String> {
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if *built {
        return Ok(TEST_IMAGE);
    }
    if docker(&["image", "inspect", TEST_IMAGE])?.status.success() {
        *built = true;
        return Ok(TEST_IMAGE);
    }
    if !Path::new(BUSYBOX_PATH).exists() {
        return Err(format!(
            "{BUSYBOX_PATH} is missing: the Docker tests build their image from a static busybox. \
             Install it with `apt-get install -y busybox-static`."
        ));
    }
    let rootfs =
        std::env::temp_dir().join(format!("flotilla-busybox-rootfs-{}", std::process::id()));
    let result = build(&rootfs);
    let _ = std::fs::remove_dir_all(&rootfs);
    result?;
    *built = true;
    Ok(TEST_IMAGE)
}

/// Removes every container and volume carrying `label=value` when dropped.
#[derive(Debug)]
pub struct DockerCleanup {
    filters: Vec<String>,
}

impl DockerCleanup {
    /// Cleans up what carries `label=value` (e.g. `com.flotilla.task-arn=...`).
    pub fn new(label: &str, value: &str) -> Self {
        Self {
            filters: vec![format!("label={label}={value}")],
        }
    }

    /// Also cleans up what carries `label=value`.
    pub fn also(&mut self, label: &str, value: &str) {
        self.filters.push(format!("label={label}={value}"));
    }

    /// Removes now (also done on drop).
    pub fn run(&self) {
        for filter in &self.filters {
            if let Ok(output) = docker(&["ps", "-aq", "--filter", filter]) {
                let ids: Vec<String> = String::from_utf8_lossy(&output.stdout)
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect();
                if !ids.is_empty() {
                    let mut args = vec!["rm", "-fv"];
                    args.extend(ids.iter().map(String::as_str));
                    let _ = docker(&args);
                }
            }
            if let Ok(output) = docker(&["volume", "ls", "-q", "--filter", filter]) {
                let names: Vec<String> = String::from_utf8_lossy(&output.stdout)
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect();
                if !names.is_empty() {
                    let mut args = vec!["volume", "rm", "-f"];
                    args.extend(names.iter().map(String::as_str));
                    let _ = docker(&args);
                }
            }
        }
    }
}

impl Drop for DockerCleanup {
    fn drop(&mut self) {
        self.run();
    }
}

/// One HTTP/1.0 GET of `/` from the test process to a task's address (the host routes to
/// the cluster network); whatever came back, or an empty answer on a timeout. A task is
/// RUNNING once its containers started, which can be a moment before the server in one
/// listens, so a refused connection is tried again for up to 5 s.
pub fn http_get(address: &str, port: u16) -> String {
    use std::io::{Read as _, Write as _};
    let timeout = std::time::Duration::from_secs(5);
    let target = format!("{address}:{port}").parse().unwrap();
    let deadline = std::time::Instant::now() + timeout;
    let mut stream = loop {
        match std::net::TcpStream::connect_timeout(&target, timeout) {
            Ok(stream) => break stream,
            Err(e)
                if e.kind() == std::io::ErrorKind::ConnectionRefused
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            Err(e) => panic!("connect to {address}:{port}: {e}"),
        }
    };
    stream.set_read_timeout(Some(timeout)).unwrap();
    write!(stream, "GET / HTTP/1.0\r\nHost: {address}\r\n\r\n").unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
}
