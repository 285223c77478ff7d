import {execFile} from 'node:child_process'
import {copyFileSync, mkdirSync, readFileSync, writeFileSync} from 'node:fs'
import {join} from 'node:path'
import {promisify} from 'node:util'

import {afterAll, beforeAll, describe, expect, it} from 'vitest'

import {FIXTURES, ovm, tempDir} from '../helpers/cli.js'
import {sha256} from '../../src/oci/digest.js'
import {holdVmLock, stopDaemon, vmSkipReason} from '../engine/helpers.js'
import {startRegistry} from '../helpers/registry.js'

const run = promisify(execFile)
const skip = vmSkipReason()
const KERNEL_ROOT = FIXTURES

const OVMFILE = `# a busybox VM made from scratch
ARG KERNEL_ROOT
FROM scratch 96M
KERNEL \${KERNEL_ROOT}/vmlinuz MODULES \${KERNEL_ROOT}/kernel-root/lib/modules/6.1.0-56-amd64
CMDLINE "console=ttyS0 panic=-1 quiet"
COPY --chmod=0755 busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
ENV GREETING="hello world"
WORKDIR /srv/app
COPY --chown=1000:1000 --chmod=0640 data.txt ./
RUN mkdir -p /etc && echo "built by ovm" > /etc/motd
RUN true
ENTRYPOINT ["/bin/sh", "-c", "echo \\"env=$GREETING cwd=$(pwd)\\"; stat -c 'data %u:%g %a' data.txt; cat data.txt /etc/motd"]
`

describe.skipIf(skip)('ovm build: a real builder VM under QEMU', () => {
  const tmp = tempDir('ovm-build-')
  const home = join(tmp.path, 'home')
  const ctx = join(tmp.path, 'ctx')
  let release: () => void
  const build = (extra: string[] = []): ReturnType<typeof ovm> =>
    ovm(['build', ctx, '--build-arg', `KERNEL_ROOT=${KERNEL_ROOT}`, '-t', 'test/app:1', '--json', ...extra], {home})

  beforeAll(async () => {
    release = await holdVmLock()
    mkdirSync(ctx, {recursive: true})
    copyFileSync('/bin/busybox', join(ctx, 'busybox'))
    writeFileSync(join(ctx, 'data.txt'), 'first version\n')
    writeFileSync(join(ctx, 'Ovmfile'), OVMFILE)
  })
  afterAll(async () => {
    await stopDaemon(home)
    release?.()
    tmp.cleanup()
  })

  it('builds a layered artifact whose files, owners, modes and env show up when it boots', async () => {
    const r = await build()
    expect(r.code, r.stderr + r.stdout).toBe(0)
    const out = JSON.parse(r.stdout)
    expect(out.result).toMatchObject({boots: 1, stepsRun: 5, stepsCached: 0})
    const info = JSON.parse((await ovm(['inspect', 'test/app:1', '--json'], {home})).stdout)
    const disks = info.layers.filter((l: {role: string}) => l.role === 'disk')
    // base + one diff per step; `RUN true` leaves only the file system's own bookkeeping (superblock, journal).
    expect(disks).toHaveLength(6)
    expect(disks[5].size).toBeLessThan(1024 * 1024)
    expect(info.ovms.diskLayers.every((d: {size: number}) => d.size === 96 * 1024 * 1024)).toBe(true)
    // every diff is a qcow2 that qemu-img accepts
    for (const d of disks.slice(1)) {
      const blob = join(home, 'blobs', 'sha256', d.digest.slice(7))
      const {stdout} = await run('bash', ['-c', `tar -xOf ${blob} disk.qcow2 > ${tmp.path}/l.qcow2 && qemu-img check --output=json ${tmp.path}/l.qcow2`])
      expect(JSON.parse(stdout).corruptions ?? 0).toBe(0)
    }
    const boot = await ovm(['run', 'test/app:1'], {home})
    expect(boot.code, boot.stderr).toBe(0)
    expect(boot.stdout).toContain('env=hello world cwd=/srv/app')
    expect(boot.stdout).toContain('data 1000:1000 640')
    expect(boot.stdout).toContain('first version')
    expect(boot.stdout).toContain('built by ovm')
  })

  it('a rebuild with nothing changed boots no VM and is the same artifact (the same digest)', async () => {
    const before = JSON.parse((await ovm(['inspect', 'test/app:1', '--json'], {home})).stdout).descriptor.digest
    const r = await build()
    expect(r.code, r.stderr).toBe(0)
    expect(JSON.parse(r.stdout).result).toMatchObject({boots: 0, stepsRun: 0, stepsCached: 5, digest: before})
  })

  it('FROM REF builds on the base artifact: its disk layers, kernel, CMDLINE and config; MEMORY and CPUS reach ovm run', async () => {
    const base = JSON.parse((await ovm(['inspect', 'test/app:1', '--json'], {home})).stdout)
    const child = join(tmp.path, 'child')
    mkdirSync(child, {recursive: true})
    // No KERNEL: the base's kernel and the modules its initramfs carries run the builder.
    writeFileSync(
      join(child, 'Ovmfile'),
      'FROM test/app:1\nMEMORY 200M\nCPUS 2\nLABEL team=vm\nRUN echo "from the child" > /etc/child\n' +
        'ENTRYPOINT ["/bin/sh", "-c", "echo env=$GREETING cwd=$(pwd) cpus=$(grep -c ^processor /proc/cpuinfo) $(grep MemTotal /proc/meminfo); cat /etc/child /etc/motd"]\n',
    )
    const r = await ovm(['build', child, '-t', 'test/child:1', '--json'], {home})
    expect(r.code, r.stderr + r.stdout).toBe(0)
    expect(JSON.parse(r.stdout).result).toMatchObject({boots: 1, stepsRun: 1, stepsCached: 0})
    const info = JSON.parse((await ovm(['inspect', 'test/child:1', '--json'], {home})).stdout)
    const digests = (i: {layers: {role: string; digest: string}[]}): string[] => i.layers.filter((l) => l.role === 'disk').map((l) => l.digest)
    expect(digests(info).slice(0, -1)).toEqual(digests(base))
    expect(digests(info)).toHaveLength(digests(base).length + 1)
    const kernelOf = (i: {layers: {role: string; digest: string}[]}): string | undefined => i.layers.find((l) => l.role === 'kernel')?.digest
    expect(kernelOf(info)).toBe(kernelOf(base))
    expect(info.ovms.kernel.args).toBe('console=ttyS0 panic=-1 quiet')
    expect(info.ovms.annotations).toMatchObject({'dev.ovm.memory-mib': '200', 'dev.ovm.cpus': '2', team: 'vm'})
    const boot = await ovm(['run', 'test/child:1'], {home})
    expect(boot.code, boot.stderr).toBe(0)
    // ENV and WORKDIR come from the base's bootstrap config; cpus and memory from the child's CPUS and MEMORY.
    expect(boot.stdout).toContain('env=hello world cwd=/srv/app cpus=2')
    const kb = Number(/MemTotal:\s*(\d+) kB/.exec(boot.stdout)?.[1])
    expect(kb).toBeGreaterThan(120 * 1024)
    expect(kb).toBeLessThanOrEqual(200 * 1024)
    expect(boot.stdout).toContain('from the child')
    expect(boot.stdout).toContain('built by ovm')
    // --memory still wins over the artifact's MEMORY.
    const small = await ovm(['run', 'test/child:1', '--memory', '160M'], {home})
    expect(Number(/MemTotal:\s*(\d+) kB/.exec(small.stdout)?.[1])).toBeLessThanOrEqual(160 * 1024)
  })

  it('FROM REF without KERNEL refuses a base whose initrd carries no modules, before booting anything', async () => {
    const dir = join(tmp.path, 'nokernel')
    mkdirSync(dir, {recursive: true})
    writeFileSync(join(dir, 'initrd'), 'not an initramfs')
    writeFileSync(join(dir, 'disk.raw'), Buffer.alloc(1024 * 1024))
    const p = await ovm(['pack', '--name', 'test/nok', '--version', '1', '--kernel', join(KERNEL_ROOT, 'vmlinuz'), '--initrd', join(dir, 'initrd'), '--disk', join(dir, 'disk.raw'), '-t', 'test/nok:1'], {home})
    expect(p.code, p.stderr).toBe(0)
    writeFileSync(join(dir, 'Ovmfile'), 'FROM test/nok:1\nRUN true\n')
    const r = await ovm(['build', dir, '-t', 'test/nok2:1', '--json'], {home})
    expect(r.code).toBe(3)
    const err = JSON.parse(r.stdout).error
    expect(err.code).toBe('BASE_HAS_NO_KERNEL')
    expect(err.message).toContain('test/nok')
    expect(err.hint).toContain('KERNEL')
    expect((await ovm(['inspect', 'test/nok2:1', '--json'], {home})).code).not.toBe(0)
  })

  it('ovm run exits with the workload\'s exit status; a new ENTRYPOINT alone boots no builder', async () => {
    const other = join(ctx, 'Exit7.Ovmfile')
    writeFileSync(other, OVMFILE.replace(/ENTRYPOINT .*\n/, 'ENTRYPOINT ["/bin/sh", "-c", "echo leaving; exit 7"]\n'))
    const r = await ovm(['build', '-f', other, ctx, '--build-arg', `KERNEL_ROOT=${KERNEL_ROOT}`, '-t', 'test/exit7:1', '--json'], {home})
    expect(r.code, r.stderr).toBe(0)
    expect(JSON.parse(r.stdout).result.boots).toBe(0)
    const boot = await ovm(['run', 'test/exit7:1'], {home})
    expect(boot.stdout).toContain('leaving')
    expect(boot.code).toBe(7)
  })

  it('changing one COPY input rebuilds from that step on only', async () => {
    writeFileSync(join(ctx, 'data.txt'), 'second version\n')
    const plan = JSON.parse((await build(['--dry-run'])).stdout).plan
    expect(plan.steps.map((s: {cached: boolean}) => s.cached)).toEqual([true, true, false, false, false])
    const r = await build()
    expect(JSON.parse(r.stdout).result).toMatchObject({boots: 1, stepsRun: 3, stepsCached: 2})
    const boot = await ovm(['run', 'test/app:1'], {home})
    expect(boot.stdout).toContain('second version')
  })

  it('a failed step prints its line and output, keeps earlier layers, and the next build resumes there', async () => {
    const file = readFileSync(join(ctx, 'Ovmfile'), 'utf8')
    writeFileSync(join(ctx, 'Ovmfile'), file.replace('RUN true', 'RUN echo "about to fail" && exit 7'))
    const r = await ovm(['build', ctx, '--build-arg', `KERNEL_ROOT=${KERNEL_ROOT}`, '-t', 'test/app:2'], {home})
    expect(r.code).toBe(11)
    expect(r.stderr).toContain('about to fail')
    expect(r.stderr).toMatch(/Ovmfile:12: RUN echo "about to fail" && exit 7 failed with exit status 7/)
    writeFileSync(join(ctx, 'Ovmfile'), file.replace('RUN true', 'RUN echo fixed > /fixed'))
    const plan = JSON.parse((await build(['--dry-run'])).stdout).plan
    expect(plan.steps.map((s: {cached: boolean}) => s.cached)).toEqual([true, true, true, true, false])
  })

  it('a step that writes N MiB yields a diff of about N MiB, not the disk size', async () => {
    const file = readFileSync(join(ctx, 'Ovmfile'), 'utf8').replace(/RUN (true|echo fixed > \/fixed)\n/, 'RUN dd if=/dev/urandom of=/blob bs=1M count=16 2>/dev/null\n')
    writeFileSync(join(ctx, 'Ovmfile'), file)
    const r = await build()
    expect(r.code, r.stderr + r.stdout).toBe(0)
    const info = JSON.parse((await ovm(['inspect', 'test/app:1', '--json'], {home})).stdout)
    const last = info.layers.filter((l: {role: string}) => l.role === 'disk').at(-1)
    expect(last.size).toBeGreaterThan(16 * 1024 * 1024)
    expect(last.size).toBeLessThan(16 * 1024 * 1024 * 1.25)
  })

  it('--sign --provenance attach a signature and a signed SLSA provenance naming every step and layer', async () => {
    const env = {OVM_KEY_PASSWORD: ''}
    expect((await ovm(['key', 'generate', '--out', join(tmp.path, 'k')], {home, env})).code).toBe(0)
    const r = await ovm(['build', ctx, '--build-arg', `KERNEL_ROOT=${KERNEL_ROOT}`, '-t', 'test/app:1', '--json', '--sign', '--provenance', '--key', join(tmp.path, 'k.key')], {home, env})
    expect(r.code, r.stderr).toBe(0)
    const out = JSON.parse(r.stdout)
    expect(out.signatures).toHaveLength(2)
    const v = JSON.parse((await ovm(['verify', 'test/app:1', '--key', join(tmp.path, 'k.pub'), '--json'], {home})).stdout)
    const types = v.verified.map((x: {predicateType: string}) => x.predicateType).sort()
    expect(types).toEqual(['https://sigstore.dev/cosign/sign/v1', 'https://slsa.dev/provenance/v1'])
    const prov = v.verified.find((x: {predicateType: string}) => x.predicateType === 'https://slsa.dev/provenance/v1').statement.predicate
    expect(prov.buildDefinition.externalParameters.ovmfile.digest.sha256).toMatch(/^[a-f0-9]{64}$/)
    expect(prov.buildDefinition.internalParameters.engine.name).toBe('qemu')
    const info = JSON.parse((await ovm(['inspect', 'test/app:1', '--json'], {home})).stdout)
    expect(prov.buildDefinition.resolvedDependencies[1].digest.sha256).toBe(info.ovms.kernel.ref.slice(7))
    const layers = prov.runDetails.byproducts.map((b: {annotations: {layer?: string}}) => b.annotations.layer)
    const diskDigests = info.layers.filter((l: {role: string}) => l.role === 'disk').slice(1).map((l: {digest: string}) => l.digest)
    expect(layers).toEqual(diskDigests)
    const tree = (await ovm(['discover', 'test/app:1'], {home})).stdout
    expect(tree).toMatch(/sha256:[0-9a-f]{64} +[\d.]+ B +signature$/m)
    expect(tree).toMatch(/attestation https:\/\/slsa\.dev\/provenance\/v1$/m)
  })

  it('--push sends the result and its signed referrers to the registry the tag names', async () => {
    const reg = await startRegistry()
    try {
      const env = {OVM_KEY_PASSWORD: ''}
      const tag = `${reg.host}/vm/app:1`
      const r = await ovm(['build', ctx, '--build-arg', `KERNEL_ROOT=${KERNEL_ROOT}`, '-t', tag, '--push', '--sign', '--key', join(tmp.path, 'k.key'), '--json'], {home, env})
      expect(r.code, r.stderr).toBe(0)
      const out = JSON.parse(r.stdout)
      expect(out.result.boots).toBe(0) // everything cached
      expect(out.pushed).toEqual([`${tag}@${out.result.digest}`])
      const {stdout} = await run('skopeo', ['inspect', '--raw', '--tls-verify=false', `docker://${tag}`])
      expect(sha256(stdout)).toBe(out.result.digest)
      const v = await ovm(['verify', tag, '--key', join(tmp.path, 'k.pub')], {home: join(tmp.path, 'elsewhere')})
      expect(v.code, v.stderr).toBe(0)

      // FROM a registry reference: a store that lacks it pulls it, the builder runs on the pulled artifact's
      // kernel (no KERNEL line), and the new step layers on its disk chain.
      const ctx2 = join(tmp.path, 'ctx2')
      mkdirSync(ctx2, {recursive: true})
      writeFileSync(join(ctx2, 'Ovmfile'), `FROM ${tag}\nRUN echo layered > /layered\nENTRYPOINT ["/bin/cat", "/layered", "/etc/motd"]\n`)
      const home2 = join(tmp.path, 'home2')
      const b2 = await ovm(['build', ctx2, '-t', 'test/layered:1', '--json'], {home: home2})
      expect(b2.code, b2.stderr).toBe(0)
      const layered = JSON.parse((await ovm(['inspect', 'test/layered:1', '--json'], {home: home2})).stdout)
      const baseDisks = JSON.parse((await ovm(['inspect', tag, '--json'], {home: home2})).stdout).layers.filter((l: {role: string}) => l.role === 'disk')
      const disks = layered.layers.filter((l: {role: string}) => l.role === 'disk')
      expect(disks.length).toBe(baseDisks.length + 1)
      expect(disks.slice(0, -1).map((d: {digest: string}) => d.digest)).toEqual(baseDisks.map((d: {digest: string}) => d.digest))
      const boot = await ovm(['run', 'test/layered:1'], {home: home2})
      expect(boot.stdout).toContain('layered')
      expect(boot.stdout).toContain('built by ovm')
      await stopDaemon(home2)
    } finally {
      await reg.stop()
    }
  })

  it('KERNEL can name a kernel artifact made by `ovm kernel import`', async () => {
    const k = await ovm(['kernel', 'import', join(KERNEL_ROOT, 'kernel-root'), '-t', 'test/kernel:6.1', '--json'], {home})
    expect(k.code, k.stderr).toBe(0)
    const ctx3 = join(tmp.path, 'ctx3')
    mkdirSync(ctx3, {recursive: true})
    copyFileSync('/bin/busybox', join(ctx3, 'busybox'))
    writeFileSync(
      join(ctx3, 'Ovmfile'),
      'FROM scratch 64M\nKERNEL test/kernel:6.1\nCOPY --chmod=0755 busybox /bin/busybox\nRUN ["/bin/busybox", "--install", "-s", "/bin"]\nENTRYPOINT ["/bin/sh", "-c", "echo kernel $(uname -r) from an artifact"]\n',
    )
    const r = await ovm(['build', ctx3, '-t', 'test/kart:1'], {home})
    expect(r.code, r.stderr).toBe(0)
    const boot = await ovm(['run', 'test/kart:1'], {home})
    expect(boot.stdout).toContain('kernel 6.1.0-56-amd64 from an artifact')
  })

  it('after rm and prune removed its layers, a build runs those steps again instead of failing', async () => {
    const h = join(tmp.path, 'prune-home')
    const b = (): ReturnType<typeof ovm> => ovm(['build', ctx, '--build-arg', `KERNEL_ROOT=${KERNEL_ROOT}`, '-t', 'test/p:1', '--json'], {home: h})
    expect((await b()).code).toBe(0)
    expect((await ovm(['rm', 'test/p:1', '--prune'], {home: h})).code).toBe(0)
    const plan = JSON.parse((await ovm(['build', ctx, '--build-arg', `KERNEL_ROOT=${KERNEL_ROOT}`, '-t', 'test/p:1', '--dry-run', '--json'], {home: h})).stdout).plan
    expect(plan.steps.every((s: {cached: boolean}) => !s.cached)).toBe(true)
    const again = await b()
    expect(again.code, again.stderr).toBe(0)
    expect(JSON.parse(again.stdout).result.stepsRun).toBe(plan.steps.length)
  })

  it('a bad Ovmfile gets every error and builds nothing', async () => {
    const bad = join(tmp.path, 'bad')
    mkdirSync(bad, {recursive: true})
    writeFileSync(join(bad, 'Ovmfile'), 'FROM scratch 1X\nKERNEL\nCOPY missing.txt /x\nRUNN echo\n')
    const h = join(tmp.path, 'empty-home')
    const r = await ovm(['build', bad, '-t', 'x:1'], {home: h})
    expect(r.code).toBe(3)
    for (const at of [':1:14', ':2:', ':3:', ':4:1']) expect(r.stderr).toContain(at)
    expect(r.stderr).toContain('Did you mean RUN?')
    const ls = JSON.parse((await ovm(['ls', '--json'], {home: h})).stdout)
    expect(ls.artifacts).toEqual([])
  })
})
