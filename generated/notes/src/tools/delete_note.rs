//! The `delete_note` tool. Created by bmm once: this file is yours and is never overwritten. If the tool's schema changes, the compiler points here.

use bmm_runtime::ToolError;

use crate::generated::Ctx;
use crate::generated::types::{DeleteNoteInput, DeleteNoteOutput};

/// Deletes a note for good; deleting a missing note is not an error.
pub(crate) async fn delete_note(
    ctx: &Ctx,
    input: DeleteNoteInput,
) -> Result<DeleteNoteOutput, ToolError> {
    let removed = ctx.state().store().notes.remove(&input.id);
    if let Some(note) = &removed {
        // Who deleted whose note goes to the server log (never the token itself).
        bmm_runtime::tracing::info!(
            id = input.id,
            author = note.author.as_deref().unwrap_or("unknown"),
            deleted_by = ctx.auth().and_then(|a| a.subject()).unwrap_or("unknown"),
            "note deleted"
        );
    }
    Ok(DeleteNoteOutput {
        deleted: removed.is_some(),
    })
}
