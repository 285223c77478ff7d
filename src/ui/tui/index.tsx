/**
 * The TUI's one entry point: `renderDashboard` draws the dashboard on a
 * terminal until the user quits. Commands never import ink themselves.
 */
import {render, useStdout} from 'ink'
import {type JSX, useEffect, useState} from 'react'

import {Dashboard, type DashboardProps} from './dashboard.js'
import type {DashboardSource} from './types.js'

export type {DashboardSource} from './types.js'

function Sized(props: Omit<DashboardProps, 'width' | 'height'>): JSX.Element {
  const {stdout} = useStdout()
  const read = (): {width: number; height: number} => ({width: stdout.columns || 80, height: stdout.rows || 24})
  const [size, setSize] = useState(read)
  useEffect(() => {
    const onResize = (): void => setSize(read())
    stdout.on('resize', onResize)
    return () => {
      stdout.off('resize', onResize)
    }
  })
  return <Dashboard {...props} width={size.width} height={size.height} />
}

/**
 * Draw the dashboard on the alternate screen (the terminal is as it was
 * after quitting) until `q` or Ctrl+C. The caller checks that both streams
 * are terminals.
 */
export async function renderDashboard(
  source: DashboardSource,
  opts: {color: boolean; pollMs?: number; stdin?: NodeJS.ReadStream; stdout?: NodeJS.WriteStream},
): Promise<void> {
  const stdout = opts.stdout ?? process.stdout
  stdout.write('\x1b[?1049h\x1b[H')
  try {
    const app = render(<Sized source={source} color={opts.color} pollMs={opts.pollMs} />, {
      stdout,
      stdin: opts.stdin ?? process.stdin,
      exitOnCtrlC: true,
      patchConsole: true,
      maxFps: 20,
    })
    await app.waitUntilExit()
  } finally {
    stdout.write('\x1b[?1049l')
  }
}
