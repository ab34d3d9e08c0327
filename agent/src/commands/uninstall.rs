//! `tiergate uninstall`.

use crate::cli::UninstallArgs;
use crate::enforcement::uninstall;

pub fn run(args: &UninstallArgs) -> i32 {
    match uninstall::uninstall(&args.bpffs) {
        Ok(r) if r.links.is_empty() && r.other.is_empty() => {
            println!("nothing pinned under {}/tiergate", args.bpffs.display());
            0
        }
        Ok(r) => {
            println!(
                "removed {} links (programs detached) and {} maps under {}/tiergate",
                r.links.len(),
                r.other.len(),
                args.bpffs.display()
            );
            0
        }
        Err(e) => {
            eprintln!("tiergate uninstall: {e}");
            1
        }
    }
}
