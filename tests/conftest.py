"""Shared fixtures: one MongoDB for the session (found as docs/design.md orders it), a fresh
database per test so tests never see each other's jobs."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from pymongo import AsyncMongoClient

from service.config import Settings
from service.mongo import discovery as mongo_discovery
from service.mongo.connect import connect
from service.store import Store


def pytest_report_header(config: pytest.Config) -> list[str]:
    _, description = mongo_discovery.plan(Settings.from_env().mongodb_uri)
    return [f"mongodb: {description}"]


@pytest.fixture(scope="session")
def mongo_handle() -> Iterator[mongo_discovery.MongoHandle]:
    with mongo_discovery.discover(Settings.from_env().mongodb_uri) as handle:
        yield handle


@pytest.fixture(scope="session")
def mongo_uri(mongo_handle: mongo_discovery.MongoHandle) -> str:
    return mongo_handle.uri


@pytest.fixture(scope="session")
async def mongo_client(mongo_uri: str) -> AsyncIterator[AsyncMongoClient]:
    client = connect(mongo_uri)
    yield client
    await client.close()


@pytest.fixture
async def db_name(mongo_client: AsyncMongoClient) -> AsyncIterator[str]:
    name = f"gqtest_{uuid.uuid4().hex[:12]}"
    yield name
    await mongo_client.drop_database(name)


@pytest.fixture
async def store(mongo_client: AsyncMongoClient, db_name: str) -> Store:
    s = Store(mongo_client, db_name)
    await s.ensure_indexes()
    return s
