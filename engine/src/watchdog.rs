//! Ends a command stage's process group when pollard itself dies, however it dies. The command
//! runs in its own process group; beside it a forked watchdog waits on a pipe whose only
//! writer is pollard. When pollard exits, even by `kill -9`, the kernel closes that pipe, the
//! watchdog's read returns end-of-file, and it SIGKILLs the whole group: the command, and every
//! background job and grandchild it started that stayed in its group. (PDEATHSIG alone reaches
//! only the direct child.) When the stage ends normally, dropping the [`Watchdog`] does the same,
//! so nothing a finished command left running keeps writing into its folder.

use std::io;

/// The watchdog of one process group; dropping it kills the group and reaps the watchdog.
pub struct Watchdog {
    pid: libc::pid_t,
    write_fd: libc::c_int,
}

/// Where the watchdog stops closing descriptors when `close_range` is not available.
const MAX_FD: libc::c_int = 65_536;

impl Watchdog {
    /// Forks the watchdog of process group `pgid`.
    pub fn guard(pgid: libc::pid_t) -> io::Result<Watchdog> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: pipe2 writes two descriptors into the array.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let (read_fd, write_fd) = (fds[0], fds[1]);
        // SAFETY: after fork the child makes only async-signal-safe calls (close, read, kill,
        // _exit) and never returns into Rust code.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            let e = io::Error::last_os_error();
            unsafe {
                libc::close(read_fd);
                libc::close(write_fd);
            }
            return Err(e);
        }
        if pid == 0 {
            unsafe {
                // Its own group, so that signals sent to pollard's group (Ctrl-C) do not end it
                // before it has done its one job.
                libc::setpgid(0, 0);
                // Keep only the pipe (as fd 3): no other stage's pipe, none of pollard's files,
                // not even pollard's stdout, whose reader would otherwise wait for us.
                let keep = 3;
                if read_fd != keep {
                    libc::dup2(read_fd, keep);
                }
                if libc::syscall(libc::SYS_close_range, keep + 1, libc::c_uint::MAX, 0) != 0 {
                    let mut fd = keep + 1;
                    while fd < MAX_FD {
                        libc::close(fd);
                        fd += 1;
                    }
                }
                for fd in 0..keep {
                    libc::close(fd);
                }
                let mut byte = 0u8;
                loop {
                    let n = libc::read(keep, (&mut byte as *mut u8).cast(), 1);
                    if n == 0 || (n < 0 && *libc::__errno_location() != libc::EINTR) {
                        break;
                    }
                }
                libc::kill(-pgid, libc::SIGKILL);
                libc::_exit(0);
            }
        }
        unsafe { libc::close(read_fd) };
        Ok(Watchdog { pid, write_fd })
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        // SAFETY: closing our own pipe end wakes the watchdog, which kills the group and exits.
        unsafe {
            libc::close(self.write_fd);
            let mut status = 0;
            while libc::waitpid(self.pid, &mut status, 0) < 0
                && *libc::__errno_location() == libc::EINTR
            {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;
    use std::time::{Duration, Instant};

    fn alive(pid: i32) -> bool {
        // A zombie still answers kill(0); read its state instead.
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(s) => !s.split(") ").nth(1).is_some_and(|r| r.starts_with('Z')),
            Err(_) => false,
        }
    }

    #[test]
    fn dropping_the_watchdog_ends_background_grandchildren() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let mut child = unsafe {
            std::process::Command::new("bash")
                .arg("-c")
                .arg(format!(
                    "(while true; do sleep 0.05; done) & echo $! > {}; wait",
                    pidfile.display()
                ))
                .pre_exec(|| {
                    libc::setpgid(0, 0);
                    Ok(())
                })
                .spawn()
                .unwrap()
        };
        let dog = Watchdog::guard(child.id() as i32).unwrap();
        let started = Instant::now();
        let grandchild: i32 = loop {
            if let Some(p) = std::fs::read_to_string(&pidfile)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                break p;
            }
            assert!(started.elapsed() < Duration::from_secs(10));
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(alive(grandchild));
        drop(dog);
        let _ = child.wait();
        let started = Instant::now();
        while alive(grandchild) {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the background loop outlived its group"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
