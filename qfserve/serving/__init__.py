"""The one request pipeline every dialect runs: authenticate, permit, fit the conversation, admit,
screen, generate, settle. Nothing here knows HTTP."""
