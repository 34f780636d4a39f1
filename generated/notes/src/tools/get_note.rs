//! The `get_note` tool. Created by bmm once: this file is yours and is never overwritten. If the tool's schema changes, the compiler points here.

use bmm_runtime::ToolError;

use crate::generated::Ctx;
use crate::generated::types::{GetNoteInput, GetNoteOutput};

/// Returns one note by id.
pub(crate) async fn get_note(ctx: &Ctx, input: GetNoteInput) -> Result<GetNoteOutput, ToolError> {
    let store = ctx.state().store();
    let note = store.notes.get(&input.id).ok_or_else(|| {
        ToolError::new(format!(
            "there is no note {}: list_notes shows the ids",
            input.id
        ))
    })?;
    Ok(GetNoteOutput {
        id: input.id,
        title: note.title.clone(),
        text: note.text.clone(),
        tags: note.tags.clone(),
    })
}
