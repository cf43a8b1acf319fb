import Koa from 'koa';
import { bodyParser } from '@koa/bodyparser';

/**
 * The reference for HTTP command throughput: a bare Koa app with the same body parser, answering a
 * JSON POST with 201 and nothing else. Prints its port.
 */
const app = new Koa();
app.use(bodyParser());
app.use((ctx) => {
  ctx.status = 201;
  ctx.body = { id: 'x', received: ctx.request.body !== undefined };
});
const server = app.listen(0, '127.0.0.1', () => {
  console.log(String((server.address() as { port: number }).port));
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
