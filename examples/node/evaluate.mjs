// A client built from protos/ alone: no generated code, no specbuilder package. It lists the layer
// types with their parameters (ListLayers), then evaluates a spec (Evaluate) with a seed, so every
// server gives the same outputs, and prints them, one JSON row per sample.
//
//   node examples/node/evaluate.mjs [HOST:PORT] [SPEC.json] [SEED]
//
// defaults: 127.0.0.1:50051, examples/tutorial.json, 7. A server with tokens wants one in
// SPECBUILDER_TOKEN. The input is 3 samples whose elements are k / 10 - 1 (k = 0, 1, ...), sent as
// float32 little-endian bytes, as protos/specbuilder/v1/tensor.proto says.
import { readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
const [address = "127.0.0.1:50051", specFile = path.join(root, "examples", "tutorial.json"), seed = "7"] = process.argv.slice(2);
const ROWS = 3;

const definition = protoLoader.loadSync("specbuilder/v1/service.proto", {
  includeDirs: [path.join(root, "protos")], keepCase: true, longs: String, enums: String, defaults: true, oneofs: true,
});
const { ModelService } = grpc.loadPackageDefinition(definition).specbuilder.v1;
const client = new ModelService(address, grpc.credentials.createInsecure());
const metadata = new grpc.Metadata();
if (process.env.SPECBUILDER_TOKEN) metadata.set("authorization", `Bearer ${process.env.SPECBUILDER_TOKEN}`);

function call(method, request) {
  return new Promise((resolve, reject) =>
    client[method](request, metadata, { deadline: Date.now() + 30_000 }, (error, answer) => (error ? reject(error) : resolve(answer))));
}

function described(parameter) {
  const facts = [parameter.type];
  if (parameter.required) facts.push("required");
  if (parameter.inferred) facts.push("inferred");
  if (parameter.constraint) facts.push(parameter.constraint);
  return `${parameter.name} (${facts.join(", ")})`;
}

try {
  const { layers } = await call("ListLayers", {});
  for (const layer of layers) console.log(`${layer.name}: ${layer.parameters.map(described).join("; ")}`);

  const specText = readFileSync(specFile, "utf8");
  const inputShape = JSON.parse(specText).input_shape;
  const perSample = inputShape.reduce((a, b) => a * b, 1);
  const values = Float32Array.from({ length: ROWS * perSample }, (_, k) => k / 10 - 1);
  const answer = await call("Evaluate", {
    spec: { json: specText },
    input: { dtype: "DTYPE_FLOAT32", shape: [ROWS, ...inputShape], data: Buffer.from(values.buffer) },
    seed,
  });
  const { shape, data, dtype } = answer.output;
  if (dtype !== "DTYPE_FLOAT32") throw new Error(`expected float32 outputs, got ${dtype}`);
  const width = data.length / 4 / ROWS;
  console.log(`outputs [${shape.join(", ")}] (seed ${seed}):`);
  for (let row = 0; row < ROWS; row++) {
    console.log(JSON.stringify(Array.from({ length: width }, (_, i) => data.readFloatLE(4 * (row * width + i)))));
  }
} catch (error) {
  console.error(`${error.code !== undefined ? grpc.status[error.code] : "error"}: ${error.details ?? error.message}`);
  process.exitCode = 1;
} finally {
  client.close();
}
