"""The predictor's app (its OpenAI routes behind its guard) on uvicorn in this process, recording
the prompt ids its engine is given (`seen`): what a test compares with training's tokenization."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path


class RecordingPredictor:
    def __init__(self, model_dir: str | Path, api_key: str, name: str):
        import uvicorn
        from fastapi import FastAPI

        from slmops.predictor import guard
        from slmops.predictor.loading import load_engine
        from slmops.predictor.openai_api import make_router
        from slmops.predictor.served import Served

        self.served = Served.start(name, load_engine(model_dir, threads=1))
        self.seen: list[list[int]] = []
        start = self.served.engine.start

        def recording(prompts, sampling, max_new):
            self.seen.extend([int(i) for i in p] for p in prompts)
            return start(prompts, sampling, max_new)

        self.served.engine.start = recording
        app = FastAPI()
        app.include_router(make_router(self.served))
        app.add_middleware(guard.Guard, api_key=api_key, max_body_bytes=1 << 20)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.base_url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/openai/v1"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.served.close()
