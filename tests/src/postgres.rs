//! A real PostgreSQL server from Debian's packages (`postgresql`, installed
//! by `cargo xtask setup`), private to one test: `initdb` in a temporary
//! directory, `postgres` run as the unprivileged `postgres` user (it
//! refuses root), listening on a Unix socket in that directory only (no TCP
//! port), trust authentication; stopped and removed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The port only names the socket file (`.s.PGSQL.<port>`).
const PORT: u16 = 5432;

pub struct Postgres {
    child: Option<Child>,
    dir: PathBuf,
    bin: PathBuf,
}

/// The newest `/usr/lib/postgresql/<version>/bin`.
fn bin_dir() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed: run `cargo xtask setup` (Debian package postgresql)")
        .filter_map(|e| {
            let e = e.ok()?;
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            Some((v, e.path().join("bin")))
        })
        .filter(|(_, bin)| bin.join("postgres").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .expect("no /usr/lib/postgresql/<version>/bin/postgres: run `cargo xtask setup`")
        .1
}

/// `cmd` as the `postgres` user, the process itself (setpriv execs: no
/// intermediate process between the test and the server).
fn as_postgres(program: &Path) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=postgres",
        "--regid=postgres",
        "--init-groups",
        "--",
    ])
    .arg(program);
    cmd
}

impl Postgres {
    /// Starts a fresh server in a new directory under `parent`.
    pub fn start(parent: &Path) -> Postgres {
        let bin = bin_dir();
        let dir = parent.join("postgres");
        let data = dir.join("data");
        std::fs::create_dir_all(&dir).expect("postgres dir");
        // The server's user must reach its directory: every ancestor of a
        // temporary directory is world-searchable, the directory itself is
        // handed over.
        let status = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir)
            .status()
            .expect("chown");
        assert!(status.success(), "chown {} to postgres", dir.display());
        let out = as_postgres(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let log = std::fs::File::create(dir.join("postgres.log")).expect("log");
        let child = as_postgres(&bin.join("postgres"))
            .arg("-D")
            .arg(&data)
            .arg("-k")
            .arg(&dir)
            .args(["-p", &PORT.to_string()])
            .args(["-c", "listen_addresses=", "-c", "fsync=off"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn postgres");
        let mut pg = Postgres {
            child: Some(child),
            dir,
            bin,
        };
        pg.wait_ready();
        pg
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = Command::new(self.bin.join("pg_isready"))
                .arg("-h")
                .arg(&self.dir)
                .args(["-p", &PORT.to_string(), "-U", "postgres", "-q"])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return;
            }
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("postgres exited with {st}:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "postgres not ready:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The `--store` URL of database `postgres` on this server.
    pub fn url(&self) -> String {
        format!(
            "postgresql:///postgres?host={}&port={PORT}&user=postgres",
            self.dir.display()
        )
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGINT: PostgreSQL's fast shutdown.
            // SAFETY: kill(2) on the pid of a child this struct owns.
            unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while !matches!(c.try_wait(), Ok(Some(_))) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
