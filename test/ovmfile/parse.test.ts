import {chmodSync, mkdirSync, readFileSync, readdirSync, symlinkSync, writeFileSync} from 'node:fs'
import {dirname, join} from 'node:path'

import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {checkContext} from '../../src/build/context.js'
import {type ParseOptions, parseDuration, parseOvmfile, parseSize} from '../../src/ovmfile/parse.js'
import type {CopyStep, ParseResult, RunStep, Step} from '../../src/ovmfile/types.js'
import {ROOT, tempDir} from '../helpers/cli.js'

const EXAMPLES = join(ROOT, 'examples', 'ovmfiles')

function parse(text: string, opts?: ParseOptions): ParseResult {
  return parseOvmfile(text, 'Ovmfile', opts)
}

/** Errors as "line:col CODE". */
function errs(text: string, opts?: ParseOptions): string[] {
  return parse(text, opts).errors.map((e) => `${e.line}:${e.col} ${e.code}`)
}

function warns(text: string, opts?: ParseOptions): string[] {
  return parse(text, opts).warnings.map((e) => `${e.line}:${e.col} ${e.code}`)
}

function step<K extends Step['kind']>(r: ParseResult, i: number, kind: K): Extract<Step, {kind: K}> {
  const s = r.ovmfile.steps[i]
  expect(s?.kind).toBe(kind)
  return s as Extract<Step, {kind: K}>
}

const HEAD = 'FROM example/base:1\n'

/** One case per problem code: the Ovmfile text and the exact problems (errors, or warnings for warning codes). */
const CASES: [code: string, text: string, expected: string[]][] = [
  ['DANGLING_CONTINUATION', `${HEAD}RUN echo \\`, ['2:1 DANGLING_CONTINUATION']],
  ['UNKNOWN_INSTRUCTION', `${HEAD}  COPPY a /b`, ['2:3 UNKNOWN_INSTRUCTION']],
  ['SNAPSHOT_NOT_LAST', `${HEAD}SNAPSHOT\nEXPOSE 80`, ['3:1 SNAPSHOT_NOT_LAST']],
  ['FROM_FIRST', `ARG A=1\nENV B=2\nRUN x\n${HEAD}`, ['2:1 FROM_FIRST']],
  ['MISSING_ARGUMENT', `${HEAD}WORKDIR\nRUN []\nFROM`, ['2:8 MISSING_ARGUMENT', '3:5 MISSING_ARGUMENT', '4:5 MISSING_ARGUMENT']],
  ['DUPLICATE_FROM', `${HEAD}FROM example/other:2`, ['2:1 DUPLICATE_FROM']],
  ['SYNTAX', `${HEAD}LABEL a='unterminated`, ['2:9 SYNTAX']],
  ['BAD_EXEC_FORM', `${HEAD}ENTRYPOINT ['/app']\nCMD ["a",]`, ['2:12 BAD_EXEC_FORM', '3:5 BAD_EXEC_FORM']],
  ['BAD_SIZE', 'FROM scratch 2X\nKERNEL k', ['1:14 BAD_SIZE']],
  ['UNSUPPORTED_FS', 'FROM scratch 2G btrfs\nKERNEL k', ['1:17 UNSUPPORTED_FS']],
  ['EXTRA_ARGUMENT', 'FROM example/a:1 example/b:2', ['1:18 EXTRA_ARGUMENT']],
  ['BAD_REFERENCE', 'FROM -not/a:ref!', ['1:6 BAD_REFERENCE']],
  ['BAD_KERNEL', `${HEAD}KERNEL k MODULES`, ['2:10 BAD_KERNEL']],
  ['BAD_CPUS', `${HEAD}CPUS 65`, ['2:6 BAD_CPUS']],
  ['BAD_ADDRESS', `${HEAD}DEVICE type=ivshmem name=s mmio_addr=0xZZ`, ['2:28 BAD_ADDRESS']],
  ['UNKNOWN_KEY', `${HEAD}DEVICE type=ivshmem name=s bus=pci`, ['2:28 UNKNOWN_KEY']],
  ['BAD_PAIR', `${HEAD}ENV A=1 =2`, ['2:9 BAD_PAIR']],
  ['BAD_CHOWN', `${HEAD}COPY --chown=a: x /y`, ['2:6 BAD_CHOWN']],
  ['BAD_CHMOD', `${HEAD}COPY --chmod=0999 x /y`, ['2:6 BAD_CHMOD']],
  ['UNKNOWN_FLAG', `${HEAD}COPY --from=builder x /y`, ['2:6 UNKNOWN_FLAG']],
  ['COPY_OUTSIDE_CONTEXT', `${HEAD}COPY ok ../up a/.. /abs /dst/`, ['2:9 COPY_OUTSIDE_CONTEXT', '2:15 COPY_OUTSIDE_CONTEXT', '2:20 COPY_OUTSIDE_CONTEXT']],
  ['COPY_DEST_NOT_DIR', `${HEAD}COPY a b /dst`, ['2:10 COPY_DEST_NOT_DIR']],
  ['BAD_NAME', `${HEAD}ENV my-var value`, ['2:5 BAD_NAME']],
  ['BAD_PORT', `${HEAD}EXPOSE 80/sctp 0`, ['2:8 BAD_PORT', '2:16 BAD_PORT']],
  ['BAD_REGEXP', `${HEAD}SNAPSHOT WHEN "a(b"`, ['2:15 BAD_REGEXP']],
  ['BAD_DURATION', `${HEAD}SNAPSHOT TIMEOUT 60`, ['2:18 BAD_DURATION']],
  ['BAD_SNAPSHOT', `${HEAD}SNAPSHOT WHEN x AFTER 1s`, ['2:17 BAD_SNAPSHOT']],
  ['MISSING_FROM', '# nothing\n', ['1:1 MISSING_FROM']],
  ['MISSING_KERNEL', 'FROM disk:base.qcow2\nMEMORY 1G\nCPUS 2', ['1:1 MISSING_KERNEL']],
  // Warnings.
  ['DUPLICATE', `${HEAD}CPUS 1\nCPUS 2`, ['3:1 DUPLICATE']],
  ['UNDEFINED_VARIABLE', `${HEAD}WORKDIR /srv/$NOPE`, ['2:9 UNDEFINED_VARIABLE']],
  ['EMPTY_CONTINUATION', `${HEAD}RUN a \\\n\n  b`, ['3:1 EMPTY_CONTINUATION']],
]
const WARNING_CODES = new Set(['DUPLICATE', 'UNDEFINED_VARIABLE', 'EMPTY_CONTINUATION', 'UNUSED_BUILD_ARG'])

describe('every problem code, at its exact line:col', () => {
  it.each(CASES)('%s', (code, text, expected) => {
    const r = parse(text)
    const list = WARNING_CODES.has(code) ? r.warnings : r.errors
    expect(list.map((e) => `${e.line}:${e.col} ${e.code}`)).toEqual(expected)
    if (!WARNING_CODES.has(code)) expect(r.errors.every((e) => e.severity === 'error' && e.message !== '' && e.hint !== '')).toBe(true)
  })

  it('the table above (plus the context and build-arg tests below) covers every code the parser and checkContext can report', () => {
    const codes = new Set<string>()
    for (const f of ['src/ovmfile/parse.ts', 'src/ovmfile/lexer.ts', 'src/build/context.ts']) {
      const src = readFileSync(join(ROOT, f), 'utf8')
      for (const m of src.matchAll(/this\.(?:err|warn)\(.*?, '([A-Z_]+)'/g)) codes.add(m[1] as string)
      for (const m of src.matchAll(/code: '([A-Z_]+)'/g)) codes.add(m[1] as string)
    }
    const tested = new Set([...CASES.map((c) => c[0]), 'UNUSED_BUILD_ARG', 'CONTEXT_NOT_FOUND', 'COPY_SOURCE_MISSING'])
    expect(codes.size).toBeGreaterThan(30)
    expect([...codes].filter((c) => !tested.has(c))).toEqual([])
  })

  it('reports every problem at once, sorted by position', () => {
    const r = parse('CPUS x\nFROM scratch 1\nEXPOSE 99999\nBOGUS\n')
    expect(r.errors.map((e) => `${e.line}:${e.col} ${e.code}`)).toEqual([
      '1:1 FROM_FIRST', '1:6 BAD_CPUS', '2:14 BAD_SIZE', '3:8 BAD_PORT', '4:1 UNKNOWN_INSTRUCTION',
    ])
  })

  it('suggests the nearest instruction for a typo', () => {
    expect(parse(`${HEAD}WORKDRI /x`).errors[0]?.hint).toBe('Did you mean WORKDIR?')
    expect(parse(`${HEAD}FROBNICATE /x`).errors[0]?.hint).toMatch(/^Use one of: FROM, KERNEL/)
  })
})

describe('lexing: comments, continuation, quoting', () => {
  it('skips comments and blank lines; `#` later in a line is not a comment; keywords are case-insensitive', () => {
    const r = parse('# head\n\n   # indented comment\nfrom example/base:1\nrun echo a # not a comment\n')
    expect(r.errors).toEqual([])
    expect(step(r, 0, 'RUN').command).toBe('echo a # not a comment')
    expect(r.ovmfile.steps[0]?.pos).toEqual({line: 5, col: 1})
  })

  it('joins continued lines with one space, skipping comment lines, and tolerates blanks after the backslash', () => {
    const r = parse(`${HEAD}RUN apt-get update \\   \n  # a comment inside\n    && apt-get install -y \\\n       curl\nEXPOSE 80\n`)
    expect(r.errors).toEqual([])
    expect(r.warnings).toEqual([])
    const s = step(r, 0, 'RUN')
    expect(s.command).toBe('apt-get update && apt-get install -y curl')
    expect(s.text).toBe('RUN apt-get update && apt-get install -y curl')
    expect(s.pos).toEqual({line: 2, col: 1})
    expect(r.ovmfile.exposedPorts).toEqual(['80/tcp'])
  })

  it('an escaped backslash at the end of a line does not continue it', () => {
    const r = parse(`${HEAD}ENV A=x\\\\\nEXPOSE 80`)
    expect(r.errors).toEqual([])
    expect(r.ovmfile.env).toEqual({A: 'x\\'})
    expect(r.ovmfile.exposedPorts).toEqual(['80/tcp'])
  })

  it('reports problems on a continuation line at the line and column where they are written', () => {
    expect(errs(`${HEAD}COPY a \\\n     b \\\n   /etc/shadow /dst/`)).toEqual(['4:4 COPY_OUTSIDE_CONTEXT'])
    expect(errs(`${HEAD}EXPOSE 80 \\\n\t  http`)).toEqual(['3:4 BAD_PORT'])
    expect(warns(`${HEAD}LABEL a=1 \\\n  b=$UNSET`)).toEqual(['3:3 UNDEFINED_VARIABLE'])
  })

  it('a trailing backslash on the last line is an error with or without a final newline', () => {
    expect(errs(`${HEAD}RUN a \\`)).toEqual(['2:1 DANGLING_CONTINUATION'])
    expect(errs(`${HEAD}RUN a \\\n`)).toEqual(['2:1 DANGLING_CONTINUATION'])
    expect(errs(`${HEAD}RUN a \\\n# only a comment follows\n\n`)).toEqual(['2:1 DANGLING_CONTINUATION'])
  })

  it('a blank line inside a continuation is skipped with a warning naming it', () => {
    const r = parse(`${HEAD}RUN a \\\n\n  b\nEXPOSE 80`)
    expect(step(r, 0, 'RUN').command).toBe('a b')
    expect(r.warnings[0]?.message).toBe('blank line inside the instruction that starts on line 2; it continues on line 4')
  })

  it('reads CRLF line ends and a leading byte-order mark', () => {
    const r = parse(`\uFEFFFROM example/base:1\r\nRUN a \\\r\n  b\r\nEXPOSE 80\r\n`)
    expect(r.errors).toEqual([])
    expect(step(r, 0, 'RUN').command).toBe('a b')
  })

  it('quotes group words; backslash escapes outside single quotes', () => {
    const r = parse(`${HEAD}ENV A="two words" B='it''s' C=a\\ b D="q\\"uote" E='back\\slash'\nLABEL "key with space=v"`)
    expect(r.errors).toEqual([])
    expect(r.ovmfile.env).toEqual({A: 'two words', B: 'its', C: 'a b', D: 'q"uote', E: 'back\\slash'})
    expect(r.ovmfile.labels).toEqual({'key with space': 'v'})
  })
})

describe('variable substitution', () => {
  it('expands $VAR, ${VAR} and ${VAR:-default} from ARG and ENV (ENV wins) where it applies', () => {
    const r = parse([
      'ARG SIZE=1G',
      'FROM scratch $SIZE',
      'ARG NAME=app',
      'ARG EMPTY=',
      'KERNEL /boot/${NAME}-kernel',
      'ENV NAME=env-wins',
      'WORKDIR /srv/$NAME',
      'ENV D1=${UNSET:-fallback} D2=${EMPTY:-was-empty} D3=${NAME:-unused} D4=${UNSET:-}',
      'LABEL version=${NAME}',
      'EXPOSE ${PORT:-8080}',
      'COPY $NAME.conf ${NAME}/',
    ].join('\n'))
    expect(r.errors).toEqual([])
    expect(r.warnings).toEqual([])
    expect(r.ovmfile.from).toMatchObject({kind: 'scratch', size: 1024 ** 3, sizeText: '1G'})
    expect(r.ovmfile.kernel?.ref).toBe('/boot/app-kernel')
    expect(r.ovmfile.workdir).toBe('/srv/env-wins')
    expect(r.ovmfile.env).toMatchObject({D1: 'fallback', D2: 'was-empty', D3: 'env-wins', D4: ''})
    expect(r.ovmfile.labels).toEqual({version: 'env-wins'})
    expect(r.ovmfile.exposedPorts).toEqual(['8080/tcp'])
    expect(step(r, 0, 'COPY')).toMatchObject({sources: ['env-wins.conf'], dest: '/srv/env-wins/env-wins/'})
  })

  it('leaves `\\$`, `$` inside single quotes, and `\\$` inside double quotes literal', () => {
    const r = parse(`ARG A=val\n${HEAD}ENV P=\\$A S='$A \${A}' D="\\$A $A" B=\\\\$A N=$1 M=a$`)
    expect(r.errors).toEqual([])
    expect(r.warnings).toEqual([])
    expect(r.ovmfile.env).toEqual({P: '$A', S: '$A ${A}', D: '$A val', B: '\\val', N: '$1', M: 'a$'})
  })

  it('uses the values in force before the instruction, also within one ENV', () => {
    const r = parse(`${HEAD}ENV A=1\nENV A=2 B=$A\nENV C=$A`)
    expect(r.ovmfile.env).toEqual({A: '2', B: '1', C: '2'})
  })

  it('does not touch RUN, ENTRYPOINT or CMD: the guest shell expands those', () => {
    const r = parse(`ARG V=1\n${HEAD}ENV HOME=/root\nRUN echo $V \${HOME} $UNSET\nRUN ["echo", "$V"]\nENTRYPOINT exec $HOME/app\nCMD ["$V"]`)
    expect(r.warnings).toEqual([])
    expect(step(r, 0, 'RUN').command).toBe('echo $V ${HOME} $UNSET')
    expect(step(r, 1, 'RUN').command).toEqual(['echo', '$V'])
    expect(r.ovmfile.entrypoint).toEqual(['/bin/sh', '-c', 'exec $HOME/app'])
    expect(r.ovmfile.cmd).toEqual(['$V'])
    // ...but the step carries the ENV and ARG values for the guest.
    expect(step(r, 0, 'RUN')).toMatchObject({env: {HOME: '/root'}, args: {V: '1'}})
  })

  it('applies to CPUS and MEMORY like every other machine setting', () => {
    const r = parse(`ARG N=4\nARG MEM=2G\n${HEAD}CPUS $N\nMEMORY \${MEM}`)
    expect(r.errors).toEqual([])
    expect(r.ovmfile.cpus).toBe(4)
    expect(r.ovmfile.memory).toBe(2 * 1024 ** 3)
  })

  it('warns for an undefined variable and expands it to ""', () => {
    const r = parse(`${HEAD}ARG LATER\nWORKDIR /a/$LATER/b`)
    expect(r.warnings.map((w) => `${w.line}:${w.col} ${w.code}`)).toEqual(['3:9 UNDEFINED_VARIABLE'])
    expect(r.warnings[0]?.message).toBe('$LATER is not defined here; it expands to ""')
    expect(r.ovmfile.workdir).toBe('/a/b')
  })
})

describe('ARG and --build-arg', () => {
  const text = `ARG VERSION=1.0\n${HEAD}ARG FLAVOUR\nARG UNSET\nLABEL v=$VERSION f=$FLAVOUR\nRUN make`

  it('a build arg overrides the default and reaches substitution and the steps', () => {
    const r = parse(text, {buildArgs: {VERSION: '2.0', FLAVOUR: 'slim'}})
    expect(r.errors).toEqual([])
    expect(r.warnings).toEqual([])
    expect(r.ovmfile.labels).toEqual({v: '2.0', f: 'slim'})
    expect(r.ovmfile.args).toEqual({VERSION: '1.0', FLAVOUR: undefined, UNSET: undefined})
    expect(step(r, 0, 'RUN').args).toEqual({VERSION: '2.0', FLAVOUR: 'slim'})
  })

  it('without build args the defaults apply, and an ARG without one is undefined', () => {
    const r = parse(text)
    expect(r.ovmfile.labels).toEqual({v: '1.0', f: ''})
    expect(r.warnings.map((w) => `${w.line}:${w.col} ${w.code}`)).toEqual(['5:18 UNDEFINED_VARIABLE'])
    expect(step(r, 0, 'RUN').args).toEqual({VERSION: '1.0'})
  })

  it('warns for a build arg no ARG declares', () => {
    const r = parse(text, {buildArgs: {VERSION: '2', FLAVOUR: 'full', TYPO: 'x'}})
    expect(r.errors).toEqual([])
    expect(r.warnings.map((w) => `${w.line}:${w.col} ${w.code}`)).toEqual(['1:1 UNUSED_BUILD_ARG'])
    expect(r.warnings[0]?.message).toBe('--build-arg TYPO is not declared by any ARG')
  })
})

describe('instructions', () => {
  it('RUN: exec form is a JSON array of strings; anything else is shell form, even starting with [', () => {
    const r = parse(`${HEAD}RUN ["/bin/echo", "a  b"]\nRUN [ -f /etc/os-release ] || exit 1\nRUN [ "$X" = y ] && true\nRUN   echo  spaced  `)
    expect(r.errors).toEqual([])
    expect(step(r, 0, 'RUN').command).toEqual(['/bin/echo', 'a  b'])
    expect(step(r, 1, 'RUN').command).toBe('[ -f /etc/os-release ] || exit 1')
    expect(step(r, 2, 'RUN').command).toBe('[ "$X" = y ] && true')
    expect(step(r, 3, 'RUN').command).toBe('echo  spaced')
  })

  it('ENTRYPOINT and CMD: exec form as given, shell form through /bin/sh -c; the last one wins', () => {
    const r = parse(`${HEAD}ENTRYPOINT ["/app", "--flag"]\nCMD serve --port 80\nCMD ["serve"]`)
    expect(r.ovmfile.entrypoint).toEqual(['/app', '--flag'])
    expect(r.ovmfile.cmd).toEqual(['serve'])
    expect(warns(`${HEAD}CMD a\nCMD b`)).toEqual(['3:1 DUPLICATE'])
    expect(parse(`${HEAD}CMD serve --port 80`).ovmfile.cmd).toEqual(['/bin/sh', '-c', 'serve --port 80'])
  })

  it('FROM: scratch with size and file system, disk:PATH, or a reference', () => {
    expect(parse('FROM scratch 1.5GiB\nKERNEL k').ovmfile.from).toMatchObject({kind: 'scratch', size: 1.5 * 1024 ** 3, fs: 'ext4'})
    expect(parse('FROM scratch 16M ext4\nKERNEL k').ovmfile.from).toMatchObject({kind: 'scratch', size: 16 * 1024 ** 2})
    expect(errs('FROM scratch 15M\nKERNEL k')).toEqual(['1:14 BAD_SIZE'])
    expect(errs('FROM scratch\nKERNEL k')).toEqual(['1:6 MISSING_ARGUMENT'])
    expect(parse('FROM disk:images/base.qcow2\nKERNEL k').ovmfile.from).toMatchObject({kind: 'disk', path: 'images/base.qcow2'})
    expect(errs('FROM disk:\nKERNEL k')).toEqual(['1:6 MISSING_ARGUMENT'])
    expect(parse('FROM ghcr.io/acme/base:1.2@sha256:abc').ovmfile.from).toMatchObject({kind: 'artifact', ref: 'ghcr.io/acme/base:1.2@sha256:abc'})
    // Only a reference inherits the kernel.
    expect(errs('FROM example/base:1')).toEqual([])
  })

  it('KERNEL with MODULES, INITRD, CMDLINE, MEMORY, CPUS, DEVICE', () => {
    const r = parse([
      'FROM scratch 1G',
      'KERNEL /boot/vmlinuz modules /lib/modules/6.1',
      'INITRD /boot/initrd.img',
      'CMDLINE console=ttyS0   quiet',
      'MEMORY 512MB',
      'CPUS 64',
      'DEVICE type=ivshmem name=shm0 size=64M mmio_addr=0xFE000000',
    ].join('\n'))
    expect(r.errors).toEqual([])
    expect(r.ovmfile.kernel).toMatchObject({ref: '/boot/vmlinuz', modules: '/lib/modules/6.1'})
    expect(r.ovmfile.initrd).toBe('/boot/initrd.img')
    expect(r.ovmfile.cmdline).toBe('console=ttyS0 quiet')
    expect(r.ovmfile.memory).toBe(512 * 1024 ** 2)
    expect(r.ovmfile.cpus).toBe(64)
    expect(r.ovmfile.devices).toEqual([{type: 'ivshmem', name: 'shm0', size: 64 * 1024 ** 2, mmio_addr: '0xFE000000'}])
    expect(parse(`${HEAD}CMDLINE "a  b"`).ovmfile.cmdline).toBe('a  b')
    expect(errs(`${HEAD}MEMORY 31M`)).toEqual(['2:8 BAD_SIZE'])
    expect(errs(`${HEAD}CPUS 1.5\nCPUS 0x2`)).toEqual(['2:6 BAD_CPUS', '3:6 BAD_CPUS'])
    expect(errs(`${HEAD}DEVICE size=1M`)).toEqual(['2:8 MISSING_ARGUMENT'])
  })

  it('COPY: flags, sources, and a destination relative to WORKDIR', () => {
    const r = parse([
      HEAD,
      'COPY --chown=1000:1000 --chmod=644 a.txt /etc/a.txt',
      'WORKDIR /srv/app',
      'COPY --chown=app b c ./',
      'COPY d e .',
      'COPY f sub/f',
      'COPY ./g ../h',
      'COPY dir/ /',
    ].join('\n'))
    expect(r.errors).toEqual([])
    const copies = r.ovmfile.steps.map((s) => s as CopyStep & Step)
    expect(copies.map((s) => [s.sources, s.dest])).toEqual([
      [['a.txt'], '/etc/a.txt'],
      [['b', 'c'], '/srv/app/'],
      [['d', 'e'], '/srv/app/'],
      [['f'], '/srv/app/sub/f'],
      [['./g'], '/srv/h'],
      [['dir/'], '/'],
    ])
    expect(copies[0]).toMatchObject({chown: {user: '1000', group: '1000'}, chmod: 0o644})
    expect(copies[1]?.chown).toEqual({user: 'app'})
    expect(copies[1]?.chmod).toBeUndefined()
    expect(copies.map((s) => s.workdir)).toEqual(['/', '/srv/app', '/srv/app', '/srv/app', '/srv/app', '/srv/app'])
  })

  it('COPY: sources refused as outside the context are left out of the step', () => {
    const r = parse(`${HEAD}COPY ok /etc/passwd /dst/`)
    expect(r.errors.map((e) => e.code)).toEqual(['COPY_OUTSIDE_CONTEXT'])
    expect(step(r, 0, 'COPY').sources).toEqual(['ok'])
  })

  it('ENV in both forms, WORKDIR relative and normalised, EXPOSE, LABEL', () => {
    const r = parse(`${HEAD}ENV GREETING hello there\nENV A=1 B=2\nWORKDIR /srv\nWORKDIR app/../data/.\nEXPOSE 80 80/TCP 53/udp\nLABEL a=1 b="x y" a=3`)
    expect(r.errors).toEqual([])
    expect(r.ovmfile.env).toEqual({GREETING: 'hello there', A: '1', B: '2'})
    expect(r.ovmfile.workdir).toBe('/srv/data')
    expect(r.ovmfile.exposedPorts).toEqual(['80/tcp', '53/udp'])
    expect(r.ovmfile.labels).toEqual({a: '3', b: 'x y'})
    expect(errs(`${HEAD}ENV LONELY`)).toEqual(['2:5 MISSING_ARGUMENT'])
  })

  it('SNAPSHOT: bare, WHEN, WHEN-RUN, TIMEOUT (default 2m)', () => {
    expect(parse(`${HEAD}SNAPSHOT`).ovmfile.snapshot).toEqual({timeoutMs: 120_000, pos: {line: 2, col: 1}})
    expect(parse(`${HEAD}snapshot when "ready$" timeout 1.5s`).ovmfile.snapshot).toMatchObject({when: {kind: 'console', pattern: 'ready$'}, timeoutMs: 1500})
    expect(parse(`${HEAD}SNAPSHOT TIMEOUT 500ms WHEN-RUN "test -e /run/ready"`).ovmfile.snapshot).toMatchObject({when: {kind: 'run', command: 'test -e /run/ready'}, timeoutMs: 500})
    expect(errs(`${HEAD}SNAPSHOT WHEN`)).toEqual(['2:10 MISSING_ARGUMENT'])
    expect(errs(`${HEAD}SNAPSHOT TIMEOUT 0s`)).toEqual(['2:18 BAD_DURATION'])
  })

  it('parseSize and parseDuration', () => {
    expect(['4096', '1K', '1KiB', '1kb', '2M', '1.5G', '1T'].map(parseSize)).toEqual([4096, 1024, 1024, 1024, 2 * 1024 ** 2, 1.5 * 1024 ** 3, 1024 ** 4])
    expect(['', 'G', '1X', '-1G', '1 G B'].map(parseSize)).toEqual([undefined, undefined, undefined, undefined, undefined])
    expect(['500ms', '30s', '2m', '1h', '0.5s'].map(parseDuration)).toEqual([500, 30_000, 120_000, 3_600_000, 500])
    expect(['30', '1d', 's'].map(parseDuration)).toEqual([undefined, undefined, undefined])
  })
})

describe('Ovmfile.example', () => {
  it('parses with no errors or warnings, into the steps and settings it shows', () => {
    const r = parseOvmfile(readFileSync(join(ROOT, 'Ovmfile.example'), 'utf8'), 'Ovmfile.example', {buildArgs: {KERNEL_ROOT: '/k'}})
    expect(r.errors).toEqual([])
    expect(r.warnings).toEqual([])
    const f = r.ovmfile
    expect(f.from).toMatchObject({kind: 'scratch', size: 128 * 1024 ** 2, fs: 'ext4'})
    expect(f.kernel).toMatchObject({ref: '/k/boot/vmlinuz-6.1.0-56-amd64', modules: '/k/lib/modules/6.1.0-56-amd64'})
    expect(f.cmdline).toBe('console=ttyS0 panic=-1 quiet')
    expect([f.memory, f.cpus]).toEqual([256 * 1024 ** 2, 1])
    expect(f.steps.map((s) => s.kind)).toEqual(['COPY', 'RUN', 'COPY', 'RUN'])
    const copy = step(r, 2, 'COPY')
    expect(copy).toMatchObject({sources: ['app.sh'], dest: '/srv/app/', chmod: 0o755, workdir: '/srv/app', env: {APP_HOME: '/srv/app'}})
    const run = step(r, 3, 'RUN') as RunStep & Step
    expect(run).toMatchObject({command: 'echo "$GREETING from the build" > greeting', args: {GREETING: 'hello'}, workdir: '/srv/app'})
    expect(f.entrypoint).toEqual(['/srv/app/app.sh'])
    expect(f.exposedPorts).toEqual(['8080/tcp'])
    expect(f.labels).toEqual({'org.opencontainers.image.source': 'https://example.com/hello'})
  })
})

describe('checkContext', () => {
  let tmp: {path: string; cleanup: () => void}
  beforeAll(() => {
    tmp = tempDir('ovm-ctx-')
    mkdirSync(join(tmp.path, 'ctx', 'dir'), {recursive: true})
    writeFileSync(join(tmp.path, 'ctx', 'a.txt'), 'a\n')
    writeFileSync(join(tmp.path, 'ctx', 'dir', 'b.txt'), 'b\n')
    writeFileSync(join(tmp.path, 'outside.txt'), 'secret\n')
    symlinkSync('../outside.txt', join(tmp.path, 'ctx', 'escape'))
    symlinkSync('a.txt', join(tmp.path, 'ctx', 'alias'))
  })
  afterAll(() => tmp.cleanup())

  const text = `${HEAD}COPY a.txt dir /x/\nCOPY missing.txt /y\n  COPY escape /z\nCOPY alias /w`

  it('reports missing sources and links that leave the context at the COPY line', async () => {
    const r = parse(text)
    expect(r.errors).toEqual([])
    const c = await checkContext(r.ovmfile, join(tmp.path, 'ctx'))
    expect(c.problems.map((p) => `${p.line}:${p.col} ${p.code}`)).toEqual(['3:1 COPY_SOURCE_MISSING', '4:3 COPY_OUTSIDE_CONTEXT'])
    expect([...c.digests.keys()]).toEqual(['a.txt', 'dir', 'alias'])
    expect(c.digests.get('dir')).toMatchObject({files: 1, bytes: 2})
    // A link inside the context is hashed as what it points to.
    expect(c.digests.get('alias')?.digest).toBe(c.digests.get('a.txt')?.digest)
  })

  it('reports a context folder that does not exist', async () => {
    const c = await checkContext(parse(text).ovmfile, join(tmp.path, 'nope'))
    expect(c.problems.map((p) => `${p.line}:${p.col} ${p.code}`)).toEqual(['1:1 CONTEXT_NOT_FOUND'])
  })

  it('a digest covers content and mode', async () => {
    const file = parse(`${HEAD}COPY dir /x/`).ovmfile
    const ctx = join(tmp.path, 'ctx')
    const d0 = (await checkContext(file, ctx)).digests.get('dir')?.digest
    writeFileSync(join(ctx, 'dir', 'b.txt'), 'B\n')
    const d1 = (await checkContext(file, ctx)).digests.get('dir')?.digest
    chmodSync(join(ctx, 'dir', 'b.txt'), 0o755)
    const d2 = (await checkContext(file, ctx)).digests.get('dir')?.digest
    expect(new Set([d0, d1, d2]).size).toBe(3)
    expect(d0).toMatch(/^sha256:[0-9a-f]{64}$/)
  })
})

describe('examples/ovmfiles', () => {
  const valid = readdirSync(join(EXAMPLES, 'valid'))
  const invalid = readdirSync(join(EXAMPLES, 'invalid')).filter((n) => n.endsWith('.Ovmfile'))

  it('has the examples', () => {
    expect(valid.length).toBeGreaterThanOrEqual(3)
    expect(invalid.length).toBeGreaterThanOrEqual(6)
    for (const n of invalid) expect(readdirSync(join(EXAMPLES, 'invalid'))).toContain(n.replace(/\.Ovmfile$/, '.expected.json'))
  })

  it.each(valid)('valid/%s: no errors or warnings, and every COPY source is in its folder', async (name) => {
    const path = join(EXAMPLES, 'valid', name, 'Ovmfile')
    const r = parseOvmfile(readFileSync(path, 'utf8'), path)
    expect(r.errors).toEqual([])
    expect(r.warnings).toEqual([])
    expect(r.ovmfile.steps.length).toBeGreaterThan(0)
    const c = await checkContext(r.ovmfile, dirname(path))
    expect(c.problems).toEqual([])
    const sources = r.ovmfile.steps.flatMap((s) => (s.kind === 'COPY' ? s.sources : []))
    expect(sources.length).toBeGreaterThan(0)
    expect([...c.digests.keys()].sort()).toEqual([...new Set(sources)].sort())
  })

  it.each(invalid)('invalid/%s: exactly the problems in its .expected.json', async (name) => {
    const path = join(EXAMPLES, 'invalid', name)
    const expected = JSON.parse(readFileSync(path.replace(/\.Ovmfile$/, '.expected.json'), 'utf8')) as string[]
    expect(expected.length).toBeGreaterThan(0)
    const r = parseOvmfile(readFileSync(path, 'utf8'), path)
    const c = await checkContext(r.ovmfile, dirname(path))
    const all = [...r.errors, ...c.problems].sort((a, b) => a.line - b.line || a.col - b.col)
    expect(all.map((p) => `${p.line}:${p.col} ${p.code}`)).toEqual(expected)
  })
})
