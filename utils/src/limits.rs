//! The process's limit on open files: every connection and every open segment file is a
//! descriptor, so servers and the benchmark harness raise it before they need it.
//!
//! Owns: [`raise_open_files`]. Must never: lower a limit.

use std::io;

/// Raises this process's limit on open files (children inherit it): to `want`, soft and
/// hard, if given and above the soft limit now (above the hard limit that takes
/// privilege); otherwise, or when that is refused, the soft limit to the hard one.
/// Returns the soft limit in force (0 if it cannot be read) and why `want` could not be
/// had, if it could not.
pub fn raise_open_files(want: Option<u64>) -> (u64, Option<String>) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on local structs.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return (0, Some(io::Error::last_os_error().to_string()));
        }
        let mut refused = None;
        if let Some(want) = want {
            if lim.rlim_cur >= want {
                return (lim.rlim_cur, None);
            }
            let raised = libc::rlimit {
                rlim_cur: want,
                rlim_max: want.max(lim.rlim_max),
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return (want, None);
            }
            refused = Some(format!(
                "setrlimit(RLIMIT_NOFILE, {want}) failed: {} (hard limit {})",
                io::Error::last_os_error(),
                lim.rlim_max
            ));
        }
        if lim.rlim_cur < lim.rlim_max {
            let soft = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &soft) == 0 {
                lim = soft;
            }
        }
        (lim.rlim_cur, refused)
    }
}

#[cfg(test)]
mod tests {
    use super::raise_open_files;

    #[test]
    fn never_lowers_the_limit_and_reports_what_is_in_force() {
        let (before, _) = raise_open_files(None);
        assert!(before > 0);
        // Asking for less than there is changes nothing.
        assert_eq!(raise_open_files(Some(1)), (before, None));
        assert_eq!(raise_open_files(None).0, before);
    }
}
