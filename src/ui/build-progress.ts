import {Listr, ListrLogger, ProcessOutput} from 'listr2'

import {isInteractive} from './format.js'

/** What the build progress view needs to know about a step (a subset of the plan's). */
export interface ProgressStep {
  index: number
  line: number
  text: string
  cached: boolean
}

interface Pending {
  resolve: (title: string) => void
  reject: (err: Error) => void
  output: (line: string) => void
}

/**
 * A listr2 task tree for `ovm build`: one task per Ovmfile step, marked
 * CACHED or with its duration, the step's output under it while it runs.
 * In a terminal it redraws in place; elsewhere (CI) listr2's plain renderer
 * prints lines; under --json nothing is drawn. Driven by build events.
 */
export class BuildProgress {
  private readonly pending = new Map<number, Pending>()
  private readonly done: Promise<unknown>

  constructor(steps: ProgressStep[], opts: {quiet: boolean}) {
    const waits = new Map<number, Promise<string>>()
    for (const s of steps) {
      let p!: Pending
      const promise = new Promise<string>((resolve, reject) => {
        p = {resolve, reject, output: () => undefined}
      })
      promise.catch(() => undefined)
      this.pending.set(s.index, p)
      waits.set(s.index, promise)
    }
    const tty = isInteractive(process.stderr)
    const list = new Listr(
      steps.map((s) => ({
        title: `line ${s.line}: ${s.text}`,
        task: async (_ctx: unknown, task: {title: string; output: string}) => {
          const p = this.pending.get(s.index) as Pending
          p.output = (line) => {
            task.output = line
          }
          task.title = `line ${s.line}: ${s.text}  ${await waits.get(s.index)}`
        },
        rendererOptions: {outputBar: 1},
      })),
      {
        concurrent: false,
        exitOnError: true,
        silentRendererCondition: () => opts.quiet,
        fallbackRendererCondition: () => !tty,
        rendererOptions: {
          collapseSubtasks: false,
          logger: new ListrLogger({processOutput: new ProcessOutput(process.stderr, process.stderr)}),
        },
        fallbackRendererOptions: {logger: new ListrLogger({processOutput: new ProcessOutput(process.stderr, process.stderr)})},
      },
    )
    this.done = list.run().catch(() => undefined)
  }

  cached(index: number): void {
    this.pending.get(index)?.resolve('CACHED')
  }

  output(index: number, line: string): void {
    this.pending.get(index)?.output(line)
  }

  finished(index: number, note: string): void {
    this.pending.get(index)?.resolve(note)
  }

  /** Fail the step that was running (and stop drawing). */
  failed(index: number, message: string): void {
    this.pending.get(index)?.reject(new Error(message))
  }

  /** Wait until the view has drawn its last frame. */
  async close(): Promise<void> {
    await this.done
  }
}
