"""`python -m services.node_agent`: the node agent of one GPU node."""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import socket

from dilu.v1 import node_agent_pb2_grpc, types_pb2

from services.common import subjects
from services.common.bus import Bus
from services.common.config import ServerConfig, server_config, service_parser
from services.common.grpc_server import GrpcServer, serve_until_stopped
from services.common.logs import setup_logging
from services.common.tracing import setup_tracing
from services.node_agent.agent import NodeAgent
from services.node_agent.gpus import SIM_GPU_TYPES, SimGpuBackend
from services.node_agent.service import NodeAgentServicer

log = logging.getLogger("services.node_agent")


def default_node_id() -> str:
    # KV keys and subject tokens allow only these characters.
    return re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname()) or "node"


def main() -> None:
    parser = service_parser("node-agent", "Dilu node agent: runs instances on this node's GPUs.")
    parser.add("--node-id", default=default_node_id(), help="this node's id")
    parser.add("--advertise-address", default="",
               help="address the scheduler dials (default: host:bound port)")
    parser.add("--gpu-backend", default="sim", help="GPU backend: sim")
    parser.add("--sim-gpus", default=2, type=int, help="number of simulated GPUs")
    parser.add("--sim-gpu-type", default="A100-40GB",
               help=f"simulated GPU type: {', '.join(SIM_GPU_TYPES)}")
    parser.add("--heartbeat-interval-s", default=2.0, type=float, help="heartbeat period")
    args = parser.parse_args()
    if args.gpu_backend != "sim":
        parser.error("--gpu-backend: only 'sim' exists so far (NVML arrives with the worker data path)")
    if not re.fullmatch(r"[A-Za-z0-9_-]+", args.node_id):
        parser.error(f"--node-id: {args.node_id!r} may only hold letters, digits, '_' and '-'")
    config = server_config("node-agent", args)
    setup_logging("node-agent", config.log_level)
    setup_tracing("dilu-node-agent")
    asyncio.run(run(config, args))


async def run(config: ServerConfig, args: argparse.Namespace) -> None:
    bus = await Bus.connect(config.nats_url, f"dilu-node-agent-{args.node_id}")
    nodes_kv = await bus.kv(subjects.NODES_BUCKET, types_pb2.Node, ttl_s=3600)
    gpus = SimGpuBackend(args.node_id, args.sim_gpus, args.sim_gpu_type)
    agent = NodeAgent(args.node_id, gpus, bus, nodes_kv, args.heartbeat_interval_s)
    server = GrpcServer(config.host, config.port)
    server.add(node_agent_pb2_grpc.add_NodeAgentServiceServicer_to_server,
               NodeAgentServicer(agent), "dilu.v1.NodeAgentService")
    await server.start()
    # Heartbeats announce the address, so the agent starts once the port is bound.
    agent.address = args.advertise_address or server.address
    await agent.start()
    log.info("node %s up with %d %s GPUs", args.node_id, len(gpus.devices()), gpus.name)
    await serve_until_stopped(server, config.ready_file, config.grace_s, agent.close, bus.close)


if __name__ == "__main__":
    main()
