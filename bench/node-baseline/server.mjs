// The Node baseline of ws-loadgen's message phase: what a minimal WebSocket server built the
// usual way in Node does per message, with nothing metered. Each upgrade must carry
// `Authorization: Bearer <access token>`, verified as the gateway verifies it (EdDSA against
// auth-service's keys, expiry and audience); the first frame has the shape and size of the
// gateway's `connected`; every text or binary frame after it is sent straight back.
//
// ws-loadgen starts it with `node server.mjs`, the key set in JWKS_JSON and the audience in
// AUDIENCE; it prints its address on the first line of stdout and exits when stdin closes.

import { createServer } from 'node:http';
import { createLocalJWKSet, jwtVerify } from 'jose';
import { WebSocketServer } from 'ws';

const GREETING =
  '{"type":"connected","connection_id":"0197a3c2e0f47c1b9d5e8f6a7b8c9d0e","session_id":"0197a3c2-e0f4-7c1b-9d5e-8f6a7b8c9d0e","user_id":"0197a3c2-e0f4-7c1b-9d5e-8f6a7b8c9d0f","plan":"free","roles":[],"expires_at":1767225600}';

const keys = createLocalJWKSet(JSON.parse(process.env.JWKS_JSON ?? '{"keys":[]}'));
const audience = process.env.AUDIENCE ?? 'tollgate';

const server = createServer((_request, response) => response.writeHead(404).end());
const sockets = new WebSocketServer({
  noServer: true,
  maxPayload: 64 * 1024,
  handleProtocols: (protocols) => (protocols.has('tollgate.v1') ? 'tollgate.v1' : false),
});

server.on('upgrade', async (request, socket, head) => {
  const header = request.headers.authorization ?? '';
  const token = header.startsWith('Bearer ') ? header.slice('Bearer '.length) : '';
  try {
    await jwtVerify(token, keys, { algorithms: ['EdDSA'], audience });
  } catch {
    socket.end('HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n');
    return;
  }
  sockets.handleUpgrade(request, socket, head, (ws) => {
    ws.send(GREETING);
    ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
  });
});

server.listen(0, '127.0.0.1', () => {
  const { address, port } = server.address();
  process.stdout.write(`${address}:${port}\n`);
});
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
