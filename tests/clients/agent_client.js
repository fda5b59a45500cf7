// A Node.js client for the async-agent JSON-lines server, using only `net`.
//
// Usage: node agent_client.js PORT < spec.json
//
// spec = {
//   "mode": "seed" | "mux",
//   "requests": [RemoteRequest, ...],
//   "connections": 1,                       // mux only: spread the requests over N connections
//   "decisions": {"<request_id>": ["approve", "deny:reason", ...]}  // mux only: answers to ToolCall questions
// }
//
// "seed" mode is written the way seed 003's JavaScript example is: one connection, one request at a
// time, and the response is the data received up to the first newline. It prints one JSON line per
// response. "mux" mode sends every request at once, splits the stream into lines, routes each line
// by request_id, answers approval questions, and prints every line it received (partial chunks and
// ToolCall questions included) once every request has its final response.

'use strict';

const net = require('net');

class AgentCLIClient {
    constructor(host = '127.0.0.1', port = 8080) {
        this.host = host;
        this.port = port;
        this.client = null;
    }

    connect() {
        return new Promise((resolve, reject) => {
            this.client = net.createConnection({ host: this.host, port: this.port }, () => resolve());
            this.client.on('error', (err) => reject(err));
        });
    }

    sendRequest(requestData) {
        return new Promise((resolve, reject) => {
            if (!this.client) {
                reject(new Error('Not connected'));
                return;
            }
            this.client.write(JSON.stringify(requestData) + '\n');
            // As in seed 003: the listener stays attached (later data only re-settles a settled promise).
            let responseData = '';
            const onData = (data) => {
                responseData += data.toString();
                if (responseData.includes('\n')) {
                    try {
                        resolve(JSON.parse(responseData.trim()));
                    } catch (err) {
                        reject(err);
                    }
                }
            };
            this.client.on('data', onData);
            this.client.on('error', (err) => reject(err));
        });
    }

    close() {
        if (this.client) {
            this.client.end();
            this.client = null;
        }
    }
}

async function seedMode(port, spec) {
    const client = new AgentCLIClient('127.0.0.1', port);
    await client.connect();
    try {
        for (const request of spec.requests) {
            const response = await client.sendRequest(request);
            process.stdout.write(JSON.stringify(response) + '\n');
        }
    } finally {
        client.close();
    }
}

function muxConnection(port, requests, decisions, received) {
    return new Promise((resolve, reject) => {
        const pending = new Set(requests.map((r) => r.request_id));
        const socket = net.createConnection({ host: '127.0.0.1', port: port }, () => {
            // All requests at once, in one write: the server answers them in any order.
            socket.write(requests.map((r) => JSON.stringify(r) + '\n').join(''));
        });
        let buffer = '';
        socket.setEncoding('utf8');
        socket.on('data', (data) => {
            buffer += data;
            let index;
            while ((index = buffer.indexOf('\n')) >= 0) {
                const line = buffer.slice(0, index);
                buffer = buffer.slice(index + 1);
                if (!line.trim()) continue;
                const message = JSON.parse(line);
                received.push(message);
                const id = message.request_id;
                if (message.partial) continue;
                if (message.response && message.response.ToolCall && !message.error) {
                    const queue = decisions[id] || [];
                    const decision = queue.length ? queue.shift() : 'approve';
                    const [command, reason] = decision.split(':');
                    socket.write(JSON.stringify({
                        request_id: id,
                        input: { Instruction: { command: command, parameters: reason ? { reason: reason } : {} } },
                    }) + '\n');
                    continue;
                }
                pending.delete(id);
                if (pending.size === 0) {
                    socket.end();
                    resolve();
                }
            }
        });
        socket.on('error', reject);
        socket.on('close', () => {
            if (pending.size) reject(new Error('connection closed with requests unanswered: ' + [...pending]));
        });
    });
}

async function muxMode(port, spec) {
    const n = Math.max(1, spec.connections || 1);
    const groups = Array.from({ length: n }, () => []);
    spec.requests.forEach((r, i) => groups[i % n].push(r));
    const received = [];
    const decisions = spec.decisions || {};
    await Promise.all(groups.filter((g) => g.length).map((g) => muxConnection(port, g, decisions, received)));
    for (const message of received) process.stdout.write(JSON.stringify(message) + '\n');
}

async function main() {
    const port = parseInt(process.argv[2], 10);
    let input = '';
    for await (const chunk of process.stdin) input += chunk;
    const spec = JSON.parse(input);
    if (spec.mode === 'mux') await muxMode(port, spec);
    else await seedMode(port, spec);
}

main().catch((err) => {
    process.stderr.write('client error: ' + (err && err.stack ? err.stack : err) + '\n');
    process.exit(1);
});
