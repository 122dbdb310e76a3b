// Run by the mongo-rs-init Job with `mongosh --nodb --file`. Safe to run any number of times:
//   1. waits for the first member, then initiates the replica set unless a member already
//      reports a configuration (a re-run, or a member that lost its disk and rejoined);
//   2. waits for a primary;
//   3. creates the application's user from MONGODB_URI (readWrite on the gatequeue database,
//      enough for change streams), or updates its password and roles when it exists, so a
//      rotated Secret takes effect by re-running the Job.
// Environment: MONGO_REPLICA_SET, MONGO_MEMBERS (host:port,...), MONGO_ROOT_USERNAME,
// MONGO_ROOT_PASSWORD, MONGODB_URI (the application's), MONGO_APP_DB.

const env = process.env;
const rsName = required("MONGO_REPLICA_SET");
const members = required("MONGO_MEMBERS").split(",").map((h) => h.trim()).filter(Boolean);
const rootUser = encodeURIComponent(required("MONGO_ROOT_USERNAME"));
const rootPassword = encodeURIComponent(required("MONGO_ROOT_PASSWORD"));
const appDbName = required("MONGO_APP_DB");
const appCredentials = credentialsOf(required("MONGODB_URI"));

const NOT_YET_INITIALIZED = 94;
const DEADLINE_MS = 10 * 60 * 1000;

function required(name) {
  const value = env[name];
  if (!value) throw new Error(`environment variable ${name} is not set`);
  return value;
}

function credentialsOf(uri) {
  const match = /^mongodb(?:\+srv)?:\/\/([^:@/]+):([^@/]*)@/.exec(uri);
  if (!match) throw new Error("MONGODB_URI carries no user:password@ part");
  return { user: decodeURIComponent(match[1]), pwd: decodeURIComponent(match[2]) };
}

function rootUri(hosts, options) {
  return `mongodb://${rootUser}:${rootPassword}@${hosts.join(",")}/admin?authSource=admin&${options}`;
}

// Retries `attempt` until it returns a value other than undefined or the deadline passes.
function waitFor(what, attempt) {
  const start = Date.now();
  let lastError = null;
  for (;;) {
    try {
      const value = attempt();
      if (value !== undefined) return value;
    } catch (e) {
      lastError = e;
    }
    if (Date.now() - start > DEADLINE_MS) {
      throw new Error(`gave up waiting for ${what}: ${lastError}`);
    }
    sleep(2000);
  }
}

// replSetGetStatus on one member: "initiated" or "uninitiated"; throws while unreachable.
function memberState(host) {
  const conn = new Mongo(rootUri([host], "directConnection=true&serverSelectionTimeoutMS=5000"));
  try {
    let status;
    try {
      status = conn.getDB("admin").runCommand({ replSetGetStatus: 1 });
    } catch (e) {
      if (e.code === NOT_YET_INITIALIZED) return "uninitiated";
      throw e;
    }
    if (status.ok === 1) return "initiated";
    if (status.code === NOT_YET_INITIALIZED) return "uninitiated";
    throw new Error(`replSetGetStatus on ${host}: ${JSON.stringify(status)}`);
  } finally {
    conn.close();
  }
}

function stateOrUnknown(host) {
  try {
    return memberState(host);
  } catch (e) {
    return "unknown";
  }
}

print(`replica set ${rsName}: members ${members.join(", ")}`);
const first = waitFor(`${members[0]} to answer`, () => memberState(members[0]));
const alreadyInitiated =
  first === "initiated" || members.slice(1).some((h) => stateOrUnknown(h) === "initiated");

if (alreadyInitiated) {
  print("replica set already initiated");
} else {
  // rs.initiate checks that every member is reachable, so wait for all of them.
  for (const host of members) waitFor(`${host} to answer`, () => memberState(host));
  const conn = new Mongo(rootUri([members[0]], "directConnection=true"));
  const result = conn.getDB("admin").runCommand({
    replSetInitiate: {
      _id: rsName,
      members: members.map((host, i) => ({ _id: i, host, priority: i === 0 ? 2 : 1 })),
    },
  });
  conn.close();
  if (result.ok !== 1) throw new Error(`replSetInitiate failed: ${JSON.stringify(result)}`);
  print("replica set initiated");
}

// A replica-set connection sends commands to the primary; retry until there is one.
const cluster = waitFor("a primary", () => {
  const conn = new Mongo(rootUri(members, `replicaSet=${rsName}&serverSelectionTimeoutMS=5000`));
  let isPrimary = false;
  try {
    isPrimary = conn.getDB("admin").runCommand({ hello: 1 }).isWritablePrimary === true;
  } finally {
    if (!isPrimary) conn.close();
  }
  return isPrimary ? conn : undefined;
});
const primaryAdmin = cluster.getDB("admin");

const roles = [{ role: "readWrite", db: appDbName }];
if (primaryAdmin.getUser(appCredentials.user)) {
  primaryAdmin.updateUser(appCredentials.user, { pwd: appCredentials.pwd, roles });
  print(`updated user ${appCredentials.user}`);
} else {
  primaryAdmin.createUser({ user: appCredentials.user, pwd: appCredentials.pwd, roles });
  print(`created user ${appCredentials.user}`);
}
cluster.close();
print("done");
