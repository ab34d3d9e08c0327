//! The agent id and the cursor at open: read, or made anew when missing or garbled.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use super::cursor::{parse_cursor, write_cursor};
use super::error::{SpoolError, io_err};
use super::files::{read_optional, write_atomic};
use super::recover::{OpenReport, move_aside};

const AGENT_ID_LEN: usize = 16;

pub(super) fn valid_agent_id(id: &str) -> bool {
    id.len() == AGENT_ID_LEN && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn new_agent_id() -> Result<String, SpoolError> {
    let path = Path::new("/dev/urandom");
    let mut bytes = [0u8; AGENT_ID_LEN / 2];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(io_err("read", path))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Reads the agent id and the cursor, creating or resetting what is missing
/// or garbled. The cursor is written before a new agent id, so an agent id on
/// disk means the cursor was written too.
pub(super) fn load_identity(
    dir: &Path,
    corrupt_dir: &Path,
    report: &mut OpenReport,
) -> Result<(String, u64), SpoolError> {
    let id_path = dir.join("agent-id");
    let id = match read_optional(&id_path)? {
        None => None,
        Some(data) => match std::str::from_utf8(&data).map(str::trim_end) {
            Ok(id) if valid_agent_id(id) => Some(id.to_string()),
            _ => {
                let to = move_aside(&id_path, corrupt_dir, "agent-id")?;
                tracing::warn!(path = %id_path.display(), moved_to = %to.display(),
                    "garbled spool agent id set aside; a new id is made");
                report.agent_id_reset = true;
                None
            }
        },
    };
    let had_spool = id.is_some() || report.agent_id_reset;

    let cursor_path = dir.join("cursor");
    let acked = match read_optional(&cursor_path)? {
        Some(data) => match parse_cursor(&data) {
            Some(seq) => seq,
            None => {
                let to = move_aside(&cursor_path, corrupt_dir, "cursor")?;
                tracing::warn!(path = %cursor_path.display(), moved_to = %to.display(),
                    "garbled spool cursor set aside; every spooled record will be sent again");
                report.cursor_reset = true;
                write_cursor(dir, 0)?;
                0
            }
        },
        None => {
            if had_spool {
                tracing::warn!(path = %cursor_path.display(),
                    "spool cursor missing; every spooled record will be sent again");
                report.cursor_reset = true;
            }
            write_cursor(dir, 0)?;
            0
        }
    };

    let id = match id {
        Some(id) => id,
        None => {
            report.created = !had_spool;
            let id = new_agent_id()?;
            write_atomic(dir, "agent-id", format!("{id}\n").as_bytes())?;
            id
        }
    };
    Ok((id, acked))
}
