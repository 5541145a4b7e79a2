//! A real Dovecot IMAP server for tests: Debian's `dovecot-imapd`, started on a free loopback
//! port in a temporary folder, with a passwd-file user `test`/`test` and a Maildir. Stopped by
//! its own PID when dropped.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use countersign::config::{ImapSettings, TransportSecurity};
use countersign::ingest::imap::{ImapSession, connect};
use futures::TryStreamExt;
use secrecy::SecretString;

pub struct Dovecot {
    dir: tempfile::TempDir,
    pub port: u16,
    /// The implicit-TLS port, when started with TLS.
    pub tls_port: Option<u16>,
    options: DovecotOptions,
    /// The master process, run in the foreground as our child: stopped on drop, and killed by
    /// the kernel if the test process dies first (so no server outlives the test suite).
    master: std::sync::Mutex<Option<std::process::Child>>,
}

/// How to run the test server.
#[derive(Debug, Clone, Default)]
pub struct DovecotOptions {
    /// Serve TLS (implicit on `tls_port`, STARTTLS on `port`) with a certificate from a test CA.
    pub tls: bool,
    /// Replace the capabilities advertised after login (to test clients without MOVE, say).
    pub capability: Option<String>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Dovecot {
    pub fn start() -> Dovecot {
        Dovecot::start_with(DovecotOptions::default())
    }

    pub fn start_with(options: DovecotOptions) -> Dovecot {
        let binary = ["/usr/sbin/dovecot", "/usr/bin/dovecot"]
            .into_iter()
            .find(|p| Path::new(p).exists());
        assert!(
            binary.is_some(),
            "Dovecot is needed for the IMAP tests: apt-get install dovecot-imapd (.ci/run does)"
        );
        let dir = tempfile::Builder::new().prefix("dovecot-").tempdir().expect("temp dir");
        // Dovecot's own users must be able to reach the mail below it.
        run("chmod", &["755", dir.path().to_str().unwrap()]);
        for sub in ["mail", "run", "state"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        std::fs::write(dir.path().join("passwd"), "test:{PLAIN}test::::::\n").unwrap();
        let tls_port = options.tls.then(free_port);
        let dovecot = Dovecot {
            port: free_port(),
            tls_port,
            dir,
            options,
            master: std::sync::Mutex::new(None),
        };
        if dovecot.options.tls {
            dovecot.make_certificates();
        }
        dovecot.write_config();
        run(
            "chown",
            &[
                "-R",
                "dovecot:dovecot",
                dovecot.dir.path().join("mail").to_str().unwrap(),
            ],
        );
        dovecot.launch();
        dovecot
    }

    fn path(&self, rest: &str) -> PathBuf {
        self.dir.path().join(rest)
    }

    fn make_certificates(&self) {
        super::make_test_certificates(self.dir.path());
    }

    /// The test CA's certificate, for clients to trust.
    pub fn ca_file(&self) -> PathBuf {
        self.path("ca.pem")
    }

    fn write_config(&self) {
        let d = self.dir.path().display();
        let ssl = if self.options.tls {
            format!("ssl = yes\nssl_cert = <{d}/server.pem\nssl_key = <{d}/server.key\n")
        } else {
            "ssl = no\n".to_string()
        };
        let imaps_port = self.tls_port.unwrap_or(0);
        let capability = self
            .options
            .capability
            .as_ref()
            .map(|c| format!("protocol imap {{\n  imap_capability = {c}\n}}\n"))
            .unwrap_or_default();
        let config = format!(
            "base_dir = {d}/run\nstate_dir = {d}/state\nlog_path = {d}/dovecot.log\nprotocols = imap\nlisten = 127.0.0.1\n{ssl}{capability}\
             disable_plaintext_auth = no\nauth_mechanisms = plain login\nmail_location = maildir:{d}/mail/%u/Maildir\n\
             first_valid_uid = 0\ndefault_login_user = dovenull\ndefault_internal_user = dovecot\ndefault_internal_group = dovecot\n\
             passdb {{\n  driver = passwd-file\n  args = scheme=PLAIN username_format=%u {d}/passwd\n}}\n\
             userdb {{\n  driver = static\n  args = uid=dovecot gid=dovecot home={d}/mail/%u\n}}\n\
             service imap-login {{\n  chroot =\n  inet_listener imap {{\n    address = 127.0.0.1\n    port = {port}\n  }}\n  inet_listener imaps {{\n    address = 127.0.0.1\n    port = {imaps_port}\n  }}\n}}\n\
             service anvil {{\n  chroot =\n}}\n",
            port = self.port
        );
        std::fs::write(self.path("dovecot.conf"), config).unwrap();
    }

    fn launch(&self) {
        use std::os::unix::process::CommandExt;
        let mut command = Command::new("dovecot");
        command.arg("-F").arg("-c").arg(self.path("dovecot.conf"));
        // SAFETY: prctl is async-signal-safe; it only sets this child's parent-death signal.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command.spawn().expect("dovecot runs");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "dovecot exited ({status}) instead of starting; see {}",
                    self.path("dovecot.log").display()
                );
            }
            assert!(Instant::now() < deadline, "dovecot did not listen on {}", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
        *self.master.lock().unwrap() = Some(child);
    }

    fn master_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.path("run/master.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Stops the server and waits for its master process to exit (killing it if it will not).
    pub fn stop(&self) {
        let Some(mut child) = self.master.lock().map(|mut m| m.take()).unwrap_or(None) else {
            return;
        };
        let pid = self.master_pid().unwrap_or(child.id() as i32);
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if child.try_wait().ok().flatten().is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(self.path("run/master.pid"));
    }

    pub fn restart(&self) {
        self.stop();
        self.launch();
    }

    /// What a restore from backup does: the INBOX gets a new UIDVALIDITY and its messages new UIDs.
    pub fn reset_uidvalidity(&self) {
        self.stop();
        let maildir = self.path("mail/test/Maildir");
        for entry in std::fs::read_dir(&maildir).unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("dovecot-uidlist") || name.starts_with("dovecot.index") {
                std::fs::remove_file(entry.path()).unwrap();
            }
        }
        // Dovecot bases a new UIDVALIDITY on the clock; make sure it moves.
        std::thread::sleep(Duration::from_millis(1100));
        self.launch();
    }

    pub fn settings(&self) -> ImapSettings {
        ImapSettings {
            host: "127.0.0.1".into(),
            port: self.port,
            user: "test".into(),
            password: SecretString::from("test"),
            security: TransportSecurity::Plain,
            ca_file: None,
            mailbox: "INBOX".into(),
            processed_folder: "Processed".into(),
            quarantine_folder: "Quarantine".into(),
            poll_interval: Duration::from_millis(300),
            use_idle: true,
            max_message_bytes: 50 * 1024 * 1024,
            max_attempts: 3,
        }
    }

    pub async fn session(&self) -> ImapSession {
        connect(&self.settings()).await.expect("test login")
    }

    /// Delivers messages as a mail server would, with IMAP APPEND.
    pub async fn deliver(&self, folder: &str, messages: &[Vec<u8>]) {
        let mut session = self.session().await;
        for message in messages {
            session.append(folder, None, None, message).await.expect("APPEND");
        }
        session.logout().await.ok();
    }

    /// How many messages a folder holds (0 if it does not exist).
    pub async fn count(&self, folder: &str) -> u32 {
        let mut session = self.session().await;
        let count = match session.examine(folder).await {
            Ok(mailbox) => mailbox.exists,
            Err(_) => 0,
        };
        session.logout().await.ok();
        count
    }

    /// The Message-IDs of the messages in a folder (none if it does not exist).
    pub async fn message_ids(&self, folder: &str) -> Vec<String> {
        let mut session = self.session().await;
        let mut ids = Vec::new();
        if let Ok(mailbox) = session.examine(folder).await
            && mailbox.exists > 0
        {
            let fetched: Vec<_> = session
                .fetch("1:*", "BODY.PEEK[]")
                .await
                .expect("fetch")
                .try_collect()
                .await
                .expect("fetched");
            for message in &fetched {
                let parsed = mail_parser::MessageParser::default().parse(message.body().unwrap_or_default());
                if let Some(id) = parsed.as_ref().and_then(|m| m.message_id()) {
                    ids.push(id.to_string());
                }
            }
        }
        session.logout().await.ok();
        ids
    }

    /// Moves everything in `from` to `to`, as an administrator restoring mail would.
    pub async fn move_all(&self, from: &str, to: &str) {
        let mut session = self.session().await;
        session.select(from).await.expect("select");
        session.mv("1:*", to).await.expect("move");
        let _: Vec<_> = session
            .expunge()
            .await
            .expect("expunge")
            .try_collect()
            .await
            .unwrap_or_default();
        session.logout().await.ok();
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(program: &str, args: &[&str]) {
    let status = Command::new(program)
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(status.success(), "{program} {args:?} failed");
}
