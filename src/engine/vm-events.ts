/**
 * What every engine's VmHandle shares: listeners, the state machine's
 * transitions as events, and the guest's console cut into lines.
 */
import type {VmEvent, VmState} from './types.js'

type Listener = (e: VmEvent) => void

/** A console line longer than this is emitted as it stands (a guest that never prints a newline). */
const MAX_LINE = 64 * 1024

export abstract class VmEvents {
  state: VmState = 'starting'
  private readonly listeners = new Set<Listener>()
  private lineBuf = ''

  on(listener: Listener): () => void {
    this.listeners.add(listener)
    return () => this.listeners.delete(listener)
  }

  protected emit(e: VmEvent): void {
    for (const l of this.listeners) {
      try {
        l(e)
      } catch {
        // a listener's bug must not kill the VM
      }
    }
  }

  /** Move to `s` and say so; nothing leaves `stopped` or `error`. */
  protected setState(s: VmState): void {
    if (this.state === s || this.state === 'stopped' || this.state === 'error') return
    this.state = s
    this.emit({type: 'state', state: s, at: Date.now()})
  }

  /** Bytes from the guest's console: one `output` event, then a `console` event per whole line. */
  protected onOutput(d: Buffer): void {
    const at = Date.now()
    this.emit({type: 'output', data: d, at})
    this.lineBuf += d.toString('utf8')
    let nl: number
    while ((nl = this.lineBuf.indexOf('\n')) >= 0) {
      const line = this.lineBuf.slice(0, nl).replace(/\r$/, '')
      this.lineBuf = this.lineBuf.slice(nl + 1)
      this.emit({type: 'console', line, at})
    }
    if (this.lineBuf.length > MAX_LINE) {
      this.emit({type: 'console', line: this.lineBuf, at})
      this.lineBuf = ''
    }
  }

  /** At the end: the last line, if the guest left one without a newline. */
  protected flushLine(): void {
    if (this.lineBuf) {
      this.emit({type: 'console', line: this.lineBuf, at: Date.now()})
      this.lineBuf = ''
    }
  }
}
