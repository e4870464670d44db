"""Receive: the DICOM SCP (C-ECHO, C-STORE) that writes what modalities send, durably, and
records it in the registry before acknowledging. Never decodes pixels, never runs models."""

from node.receive.handlers import InvalidDataset, StoreHandler, StoreStatus, read_header
from node.receive.scp import (
    STORAGE_TRANSFER_SYNTAXES,
    Receiver,
    build_ae,
    build_ssl_context,
    serve,
    shutdown,
    storage_sop_classes,
)
from node.receive.storage import InstanceStore, OutOfResources, relative_path

__all__ = [
    "STORAGE_TRANSFER_SYNTAXES",
    "InstanceStore",
    "InvalidDataset",
    "OutOfResources",
    "Receiver",
    "StoreHandler",
    "StoreStatus",
    "build_ae",
    "build_ssl_context",
    "read_header",
    "relative_path",
    "serve",
    "shutdown",
    "storage_sop_classes",
]
