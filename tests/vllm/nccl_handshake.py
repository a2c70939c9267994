"""Run inside vLLM's venv (tests/vllm/test_nccl_adapter.py): drive `VLLMNcclSync` through
vLLM 0.32's own trainer-side NCCL engine with only the two NCCL calls replaced.

NCCL needs GPUs, so `open_trainer_endpoint` (the communicator) and
`packed_nccl_broadcast_producer` (the broadcast) are swapped for recorders; everything
else is vLLM's code: `WeightTransferTrainerFactory.trainer_init`, `NCCLTrainerInitInfo`,
the worker init payload, `ModuleSource`, `HTTPVLLMWeightSyncClient` and `send_weights`.
HTTP calls go to a recording server on loopback. Prints one JSON object.
"""

from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import torch
import vllm.distributed.weight_transfer.nccl_engine as nccl_engine

from trainer.generation.weight_sync import VLLMNcclSync

calls: list[list[object]] = []
broadcast: list[str] = []


class Recorder(BaseHTTPRequestHandler):
    def _answer(self, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        calls.append(["GET", urlsplit(self.path).path, None])
        self._answer({"world_size": 1} if "world_size" in self.path else {})

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        calls.append(["POST", self.path, body])
        self._answer({"message": "ok"})

    def log_message(self, *args: object) -> None:
        pass


def fake_endpoint(init_info: object) -> object:
    return {"endpoint_for": type(init_info).__name__}


def fake_broadcast(iterator, group, src, post_iter_func, **kwargs) -> None:  # type: ignore[no-untyped-def]
    assert group == {"endpoint_for": "NCCLTrainerInitInfo"} and src == 0
    for item in iterator:
        assert isinstance(post_iter_func(item), torch.Tensor)
        broadcast.append(item[0])


async def main() -> None:
    nccl_engine.open_trainer_endpoint = fake_endpoint
    nccl_engine.packed_nccl_broadcast_producer = fake_broadcast
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    sync = VLLMNcclSync([url], master_address="127.0.0.1", master_port=29555)
    await sync.push(model, version=5)
    await sync.push(model, version=6)
    await sync.aclose()
    server.shutdown()
    print(json.dumps({"calls": calls, "broadcast": broadcast}))


asyncio.run(main())
