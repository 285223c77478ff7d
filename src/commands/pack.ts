import {Flags} from '@oclif/core'

import type {RamCompression} from '../artifact/media-types.js'
import {type PackResult, packArtifact} from '../build/pack.js'
import {AbortError, ExitCode} from '../errors/index.js'
import {humanBytes, shortDigest} from '../ui/format.js'
import {ProgressLine} from '../ui/progress.js'
import {BaseCommand} from '../cli/base-command.js'

export default class Pack extends BaseCommand {
  static summary = 'Make an OVMS artifact from a kernel, initrd and disk images already on disk.'

  static description =
    'Each file is streamed into the local store, hashed as it is written, and renamed into place only when its digest is known and checked. ' +
    'Disk images are wrapped in a one-file tar layer annotated with ovms.format (qcow2 or raw, detected from the content).'

  static examples = [
    '<%= config.bin %> pack --name example/busybox --version 1.0 --kernel vmlinuz --initrd initramfs.cpio.gz --disk rootfs.qcow2 -t example/busybox:1.0',
    '<%= config.bin %> pack --name demo --version 2 --kernel bzImage --cmdline "console=ttyS0" --disk base.raw:raw --disk diff.qcow2 -t demo:2 --json',
  ]

  static flags = {
    name: Flags.string({description: 'Artifact name, e.g. example/busybox.', required: true}),
    version: Flags.string({description: 'Artifact version, e.g. 1.0.', required: true}),
    kernel: Flags.string({description: 'Linux kernel (bzImage or vmlinux).', required: true}),
    initrd: Flags.string({description: 'Initial ramdisk.'}),
    cmdline: Flags.string({description: 'Kernel command line.'}),
    modules: Flags.string({description: 'Tar of the kernel modules (/lib/modules/VERSION).'}),
    disk: Flags.string({description: 'Disk layer FILE[:qcow2|raw], base first; repeat for diffs.', multiple: true, multipleNonGreedy: true, default: []}),
    'ram-snapshot': Flags.string({description: 'RAM snapshot file.'}),
    'ram-snapshot-compression': Flags.string({description: 'Compression of the RAM snapshot (detected when left out).', options: ['lz4', 'zstd', 'none']}),
    bootstrap: Flags.string({description: 'Bootstrap config JSON (env, workdir, entrypoint, cmd, exposedPorts).'}),
    author: Flags.string({description: 'metadata.author'}),
    created: Flags.string({description: 'metadata.created (RFC 3339); default SOURCE_DATE_EPOCH or now.'}),
    annotation: Flags.string({description: 'KEY=VALUE annotation; repeatable.', multiple: true, multipleNonGreedy: true, default: []}),
    tag: Flags.string({char: 't', description: 'Reference to tag the artifact with; repeatable.', multiple: true, multipleNonGreedy: true, required: true}),
  }

  async run(): Promise<PackResult> {
    const {flags} = await this.parse(Pack)
    const store = this.openStore(flags.store)
    const progress = new ProgressLine(this.jsonEnabled())
    const result = await packArtifact(
      store,
      {
        name: flags.name,
        version: flags.version,
        kernel: flags.kernel,
        initrd: flags.initrd,
        cmdline: flags.cmdline,
        modules: flags.modules,
        disks: flags.disk.map(parseDiskFlag),
        ramSnapshot: flags['ram-snapshot']
          ? {path: flags['ram-snapshot'], compression: flags['ram-snapshot-compression'] as RamCompression | undefined}
          : undefined,
        bootstrap: flags.bootstrap,
        author: flags.author,
        created: flags.created,
        annotations: parseAnnotations(flags.annotation),
        tags: flags.tag,
      },
      (e) => {
        if (e.type === 'layer-start') progress.start(`${e.role} ${e.path}`, e.total)
        else if (e.type === 'layer-progress') progress.update(`${e.role} ${e.path}`, e.done, e.total)
        else if (e.type === 'layer-done') progress.done(`${e.role.padEnd(14)} ${shortDigest(e.descriptor.digest)}  ${humanBytes(e.descriptor.size)}`)
      },
    )
    if (!this.jsonEnabled()) {
      for (const r of result.references) this.log(`${r}@${result.digest}`)
    }
    return result
  }
}

export function parseDiskFlag(value: string): {path: string; format?: string} {
  const m = /^(.*):([a-z0-9]+)$/.exec(value)
  if (m && m[1] && !m[1].endsWith('/')) return {path: m[1], format: m[2]}
  return {path: value}
}

export function parseAnnotations(values: string[]): Record<string, string> {
  const out: Record<string, string> = {}
  for (const v of values) {
    const i = v.indexOf('=')
    if (i <= 0) {
      throw new AbortError({
        code: 'BAD_ANNOTATION',
        message: `--annotation ${JSON.stringify(v)} is not KEY=VALUE`,
        hint: 'Write --annotation org.example.key=value.',
        exitCode: ExitCode.usage,
      })
    }
    out[v.slice(0, i)] = v.slice(i + 1)
  }
  return out
}
