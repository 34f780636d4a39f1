//! The `add_note` tool. Created by bmm once: this file is yours and is never overwritten. If the tool's schema changes, the compiler points here.

use bmm_runtime::ToolError;

use crate::generated::Ctx;
use crate::generated::types::{AddNoteInput, AddNoteOutput};
use crate::state::Note;

/// At most this many notes are kept: memory must not grow without bound.
const MAX_NOTES: usize = 10_000;

/// Stores a note and returns its id.
pub(crate) async fn add_note(ctx: &Ctx, input: AddNoteInput) -> Result<AddNoteOutput, ToolError> {
    let mut store = ctx.state().store();
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
