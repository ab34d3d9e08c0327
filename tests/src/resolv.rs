//! A per-process /etc/resolv.conf, so a test's or a benchmark's C library
//! resolver talks only to the DNS servers it names.

/// Makes `file` this process's /etc/resolv.conf, in a mount namespace of
/// its own (as `ip netns exec` does with /etc/netns/NAME/), so the C
/// library's resolver talks only to the DNS servers it names. Call before
/// starting any thread.
pub fn use_resolv_conf(file: &str) {
    // SAFETY: plain syscalls; the process is single-threaded here.
    unsafe {
        assert_eq!(
            libc::unshare(libc::CLONE_NEWNS),
            0,
            "unshare: {}",
            std::io::Error::last_os_error()
        );
        let root = c"/";
        let none = c"none";
        assert_eq!(
            libc::mount(
                none.as_ptr(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null()
            ),
            0,
            "make / private: {}",
            std::io::Error::last_os_error()
        );
        let src = std::ffi::CString::new(file).expect("path");
        let dst = c"/etc/resolv.conf";
        assert_eq!(
            libc::mount(
                src.as_ptr(),
                dst.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null()
            ),
            0,
            "bind {file} on /etc/resolv.conf: {}",
            std::io::Error::last_os_error()
        );
    }
}
