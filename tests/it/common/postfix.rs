//! A real SMTP server for tests: Debian's Postfix, run as its own instance (`postfix -c DIR`)
//! on a free loopback port, delivering every message into one Maildir that the test reads
//! back as a mail client would.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use countersign::config::{MailerSettings, SmtpSettings, TransportSecurity};

pub const MANAGERS: &str = "managers@pcse.test";
pub const TEAM: &str = "team@pcse.test";

pub struct Postfix {
    dir: tempfile::TempDir,
    pub port: u16,
    /// The implicit-TLS port (SMTPS), when started with TLS.
    pub tls_port: Option<u16>,
}

fn id(flag: &str) -> String {
    let out = Command::new("id").args([flag, "postfix"]).output().expect("id runs");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl Postfix {
    pub fn start() -> Postfix {
        Postfix::start_with(false)
    }

    /// With `tls`, STARTTLS is offered on `port` and implicit TLS served on `tls_port`, with a
    /// certificate from a test CA (`ca_file`).
    pub fn start_with(tls: bool) -> Postfix {
        assert!(
            Path::new("/usr/sbin/postfix").exists(),
            "Postfix is needed for the mail tests: apt-get install postfix (.ci/run does)"
        );
        let dir = tempfile::Builder::new().prefix("postfix-").tempdir().unwrap();
        let free_port = || TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let port = free_port();
        let tls_port = tls.then(free_port);
        let d = dir.path().display().to_string();
        if tls {
            super::make_test_certificates(dir.path());
        }
        for sub in ["conf", "queue", "data", "mail"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        let main_cf = format!(
            "compatibility_level = 3.6\nqueue_directory = {d}/queue\ndata_directory = {d}/data\n\
             command_directory = /usr/sbin\ndaemon_directory = /usr/lib/postfix/sbin\nshlib_directory = /usr/lib/postfix\nmeta_directory = /etc/postfix\n\
             mail_owner = postfix\nsetgid_group = postdrop\nmyhostname = smtp.countersign.test\nmydomain = countersign.test\nmydestination =\n\
             inet_interfaces = 127.0.0.1\ninet_protocols = ipv4\nmynetworks = 127.0.0.0/8\n\
             smtpd_recipient_restrictions = permit_mynetworks, reject\nsmtpd_relay_restrictions = permit_mynetworks, reject\nrelayhost =\n\
             virtual_mailbox_domains = regexp:{d}/conf/domains\nvirtual_mailbox_maps = regexp:{d}/conf/mailboxes\nvirtual_mailbox_base = {d}/mail\n\
             virtual_uid_maps = static:{uid}\nvirtual_gid_maps = static:{gid}\nvirtual_mailbox_limit = 0\nmessage_size_limit = 52428800\n\
             maillog_file_prefixes = {d}\nmaillog_file = {d}/postfix.log\nsmtputf8_enable = yes\nbiff = no\nalias_maps =\nalias_database =\n",
            uid = id("-u"),
            gid = id("-g"),
        );
        let tls_cf = if tls {
            format!(
                "smtpd_tls_cert_file = {d}/server.pem\nsmtpd_tls_key_file = {d}/server.key\nsmtpd_tls_security_level = may\nsmtpd_tls_loglevel = 1\n"
            )
        } else {
            String::new()
        };
        std::fs::write(dir.path().join("conf/main.cf"), main_cf + &tls_cf).unwrap();
        std::fs::write(dir.path().join("conf/domains"), "/.*/ OK\n").unwrap();
        std::fs::write(dir.path().join("conf/mailboxes"), "/.*/ inbox/\n").unwrap();
        let master = std::fs::read_to_string("/etc/postfix/master.cf").expect("Debian's master.cf");
        let master: String = master
            .lines()
            .map(|line| {
                if line.starts_with("smtp ") && line.contains(" inet ") {
                    format!("127.0.0.1:{port} inet n - n - - smtpd")
                } else {
                    line.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        let smtps = tls_port
            .map(|p| format!("127.0.0.1:{p} inet n - n - - smtpd -o smtpd_tls_wrappermode=yes\n"))
            .unwrap_or_default();
        std::fs::write(dir.path().join("conf/master.cf"), master + "\n" + &smtps).unwrap();
        run("chmod", &["755", &d]);
        run(
            "chown",
            &["postfix:postfix", &format!("{d}/data"), &format!("{d}/mail")],
        );
        let postfix = Postfix { dir, port, tls_port };
        postfix.start_again();
        postfix
    }

    fn conf(&self) -> PathBuf {
        self.dir.path().join("conf")
    }

    pub fn start_again(&self) {
        let out = Command::new("postfix")
            .arg("-c")
            .arg(self.conf())
            .arg("start")
            .output()
            .expect("postfix runs");
        assert!(
            out.status.success(),
            "postfix did not start: {}; see {}",
            String::from_utf8_lossy(&out.stderr),
            self.dir.path().join("postfix.log").display()
        );
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "postfix did not listen on {}", self.port);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn stop(&self) {
        let _ = Command::new("postfix").arg("-c").arg(self.conf()).arg("stop").output();
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every delivered message, raw, oldest first.
    pub fn messages(&self) -> Vec<Vec<u8>> {
        let mut files = Vec::new();
        for sub in ["new", "cur"] {
            if let Ok(entries) = std::fs::read_dir(self.dir.path().join("mail/inbox").join(sub)) {
                files.extend(entries.flatten().map(|e| e.path()));
            }
        }
        files.sort();
        files.into_iter().filter_map(|f| std::fs::read(f).ok()).collect()
    }

    /// Waits (Postfix delivers in the background) until `count` messages have arrived.
    pub fn wait_for(&self, count: usize) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let messages = self.messages();
            if messages.len() >= count {
                return messages;
            }
            assert!(
                Instant::now() < deadline,
                "only {} of {count} messages arrived",
                messages.len()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Postfix's own log, for tests to check what the server saw.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postfix.log")).unwrap_or_default()
    }

    pub fn mailer_settings(&self) -> MailerSettings {
        MailerSettings {
            smtp: Some(SmtpSettings {
                host: "127.0.0.1".into(),
                port: self.port,
                security: TransportSecurity::Plain,
                user: None,
                password: None,
                ca_file: None,
            }),
            from_address: super::OUR_ADDRESS.into(),
            ..MailerSettings::default()
        }
    }
}

impl Drop for Postfix {
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
