import net from 'node:net'

/**
 * A TCP proxy for fault injection between the client and a real registry.
 * - `cutUpAfter`: a connection is cut once it has carried this many bytes
 *   client→registry (the middle of an upload), `cuts` times in all;
 * - `cutDownAfter`: the same, registry→client (the middle of a download);
 * - `flipDownAt`: flip one byte at this offset of a registry→client stream
 *   (every connection that gets that far), to prove digests catch it;
 * - `delayMs`: pause each chunk (slows transfers down for kill tests).
 */
export interface ProxyOptions {
  cutUpAfter?: number
  cutDownAfter?: number
  cuts?: number
  flipDownAt?: number
  delayMs?: number
}

export class FaultProxy {
  host = ''
  cutsDone = 0
  flips = 0
  private server?: net.Server
  private readonly sockets = new Set<net.Socket>()

  constructor(
    private readonly target: {host: string; port: number},
    public opts: ProxyOptions = {},
  ) {}

  async start(): Promise<this> {
    this.server = net.createServer((client) => this.connection(client))
    await new Promise<void>((r) => this.server!.listen(0, '127.0.0.1', r))
    this.host = `127.0.0.1:${(this.server.address() as net.AddressInfo).port}`
    return this
  }

  private canCut(): boolean {
    return this.cutsDone < (this.opts.cuts ?? 1)
  }

  private connection(client: net.Socket): void {
    const upstream = net.connect(this.target.port, this.target.host)
    this.sockets.add(client).add(upstream)
    let up = 0
    let down = 0
    const kill = (): void => {
      client.destroy()
      upstream.destroy()
    }
    client.on('error', kill)
    upstream.on('error', kill)
    client.on('close', () => {
      upstream.destroy()
      this.sockets.delete(client)
    })
    upstream.on('close', () => {
      client.destroy()
      this.sockets.delete(upstream)
    })
    client.on('data', (chunk: Buffer) => {
      up += chunk.length
      if (this.opts.cutUpAfter !== undefined && up > this.opts.cutUpAfter && this.canCut()) {
        this.cutsDone++
        upstream.write(chunk.subarray(0, Math.max(0, chunk.length - (up - this.opts.cutUpAfter))))
        kill()
        return
      }
      if (!upstream.write(chunk)) {
        client.pause()
        upstream.once('drain', () => client.resume())
      }
    })
    upstream.on('data', (chunk: Buffer) => {
      const start = down
      down += chunk.length
      let out = chunk
      const at = this.opts.flipDownAt
      if (at !== undefined && at >= start && at < down) {
        out = Buffer.from(chunk)
        out[at - start] = (out[at - start] as number) ^ 0xff
        this.flips++
      }
      if (this.opts.cutDownAfter !== undefined && down > this.opts.cutDownAfter && this.canCut()) {
        this.cutsDone++
        client.write(out.subarray(0, Math.max(0, out.length - (down - this.opts.cutDownAfter))), () => kill())
        return
      }
      const send = (): void => {
        if (!client.write(out)) {
          upstream.pause()
          client.once('drain', () => upstream.resume())
        }
      }
      if (this.opts.delayMs) {
        upstream.pause()
        setTimeout(() => {
          send()
          upstream.resume()
        }, this.opts.delayMs)
      } else send()
    })
  }

  async stop(): Promise<void> {
    for (const s of this.sockets) s.destroy()
    await new Promise((r) => this.server?.close(r))
  }
}
