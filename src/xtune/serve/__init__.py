"""`xtune serve`: an OpenAI-compatible API and a chat page over the chat sessions of xtune.chat (FastAPI, uvicorn:
`pip install 'xtune[serve]'`)."""
