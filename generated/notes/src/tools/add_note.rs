//! The `add_note` tool. Created by bmm once: this file is yours and is never overwritten. If the tool's schema changes, the compiler points here.
//!
//! Also home of the note store the four tools share: in memory, behind a mutex, gone when
//! the server stops. A real deployment would put a database here.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use bmm_runtime::{ToolContext, ToolError};

use crate::generated::types::{AddNoteInput, AddNoteOutput};

/// One stored note.
#[derive(Debug, Clone)]
pub(crate) struct Note {
    pub(crate) title: String,
    pub(crate) text: String,
    pub(crate) tags: Vec<String>,
    /// Who wrote it (the token's subject), for the audit trail.
    pub(crate) author: Option<String>,
}

/// The store: note id -> note, plus the next id.
#[derive(Debug, Default)]
pub(crate) struct Store {
    pub(crate) notes: BTreeMap<i64, Note>,
    next_id: i64,
}

/// At most this many notes are kept: memory must not grow without bound.
const MAX_NOTES: usize = 10_000;

static STORE: Mutex<Store> = Mutex::new(Store {
    notes: BTreeMap::new(),
    next_id: 0,
});

/// Locks the store (a panic in another call cannot poison it for good).
pub(crate) fn store() -> MutexGuard<'static, Store> {
    STORE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Stores a note and returns its id.
pub(crate) async fn add_note(
    ctx: &ToolContext,
    input: AddNoteInput,
) -> Result<AddNoteOutput, ToolError> {
    let mut store = store();
    if store.notes.len() >= MAX_NOTES {
        return Err(ToolError::new(format!(
            "the store is full ({MAX_NOTES} notes): delete some first"
        )));
    }
    store.next_id += 1;
    let id = store.next_id;
    let note = Note {
        title: input.title.clone(),
        text: input.text,
        tags: input.tags.unwrap_or_default(),
        author: ctx.auth().and_then(|a| a.subject()).map(str::to_owned),
    };
    store.notes.insert(id, note);
    Ok(AddNoteOutput {
        id,
        title: input.title,
    })
}
