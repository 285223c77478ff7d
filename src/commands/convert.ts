import {Args, Flags} from '@oclif/core'

import {BaseCommand} from '../cli/base-command.js'
import {type ConvertResult, KERNEL_ENV, convertImage} from '../convert/convert.js'
import type {RootFs} from '../convert/mkfs.js'
import {AbortError, ExitCode} from '../errors/index.js'
import {parseSize} from '../ovmfile/index.js'
import {humanBytes, shortDigest} from '../ui/format.js'

export default class Convert extends BaseCommand {
  static summary = 'Turn a container image into a bootable OVMS artifact (or a bare file system image) run by OVMS-Init.'

  static description =
    'SOURCE is docker://[REGISTRY/]REPO[:TAG] (our registry client; linux/amd64 from an index), oci:DIR[:TAG] (an OCI image layout), ' +
    'or docker-archive:FILE.tar (a `docker save` tarball). The layers are flattened with their whiteouts, owners, modes, links and xattrs; ' +
    'entries that would leave the root are refused. With -t, the artifact boots the image\'s entrypoint + cmd as its user, with its env and ' +
    `workdir, and \`ovm run\` exits with its exit status. The kernel comes from --kernel or $${KERNEL_ENV} (a kernel artifact from \`ovm kernel import\`). ` +
    'The OVMS-Init profile is described in rfc/convert.md.'

  static examples = [
    '<%= config.bin %> convert docker://alpine:3.19 -t local/alpine:3.19 --kernel ovm/kernel:6.1',
    '<%= config.bin %> convert oci:./image:1.0 -t local/app:1 --kernel ovm/kernel:6.1 --size-buffer 1G',
    '<%= config.bin %> convert docker-archive:app.tar --output app.ext4',
    '<%= config.bin %> convert docker://localhost:5000/app:1 --fs erofs --output app.erofs',
  ]

  static args = {
    source: Args.string({description: 'docker://REF, oci:DIR[:TAG] or docker-archive:FILE.tar', required: true}),
  }

  static flags = {
    tag: Flags.string({char: 't', description: 'Make an artifact in the store with this reference; repeatable.', multiple: true, multipleNonGreedy: true, default: []}),
    output: Flags.string({char: 'o', description: 'Write the bare file system image to this path instead of making an artifact.'}),
    kernel: Flags.string({description: `Kernel artifact (ovm kernel import) or kernel path for the artifact (default: $${KERNEL_ENV}).`}),
    modules: Flags.string({description: 'With a kernel image path: its /lib/modules/VERSION folder.'}),
    fs: Flags.string({description: 'File system of the root disk.', options: ['ext4', 'erofs', 'squashfs'], default: 'ext4'}),
    size: Flags.string({description: 'Exact file system size, e.g. 2G (ext4).'}),
    'size-buffer': Flags.string({description: 'Free space on top of the content (ext4).', default: '256M'}),
    cmdline: Flags.string({description: 'Kernel command line of the artifact.'}),
    'plain-http': Flags.boolean({description: 'Talk http:// to the registry (loopback hosts always do).'}),
  }

  async run(): Promise<ConvertResult> {
    const {args, flags} = await this.parse(Convert)
    const size = flags.size !== undefined ? sizeFlag('--size', flags.size) : undefined
    const sizeBuffer = sizeFlag('--size-buffer', flags['size-buffer'])
    const result = await convertImage(flags.tag.length > 0 ? this.openStore(flags.store) : undefined, {
      source: args.source,
      fs: flags.fs as RootFs,
      ...(size !== undefined ? {size} : {}),
      sizeBuffer,
      ...(flags.output !== undefined ? {output: flags.output} : {}),
      tags: flags.tag,
      ...(flags.kernel ? {kernel: flags.kernel} : {}),
      ...(flags.modules ? {modules: flags.modules} : {}),
      ...(flags.cmdline ? {cmdline: flags.cmdline} : {}),
      ...(flags['plain-http'] ? {registry: {plainHttp: true}} : {}),
      onEvent: (e) => {
        if (e.type === 'phase') this.note(`${e.phase}${e.detail ? ` ${e.detail}` : ''}`)
        else if (e.type === 'layer-done') this.note(`  ${e.label}: ${e.entries} entries`)
      },
    })
    if (!this.jsonEnabled()) {
      this.note(
        `${result.fs} image ${humanBytes(result.imageSize)} (${result.files} files, ${humanBytes(result.contentBytes)} of content, ${result.whiteouts} whiteouts) ` +
          `in ${(result.ms.total / 1000).toFixed(1)} s`,
      )
      if (result.output) this.log(result.output)
      for (const r of result.references ?? []) this.log(`${r}@${result.digest}`)
      if (result.digest) this.note(`run it: ovm run ${result.references?.[0]}  (${shortDigest(result.digest)})`)
    }
    return result
  }
}

function sizeFlag(flag: string, text: string): number {
  const n = parseSize(text)
  if (n === undefined || n < 0) {
    throw new AbortError({code: 'BAD_SIZE', message: `${flag} ${JSON.stringify(text)} is not a size`, hint: `Write a size such as 512M or 2G.`, exitCode: ExitCode.usage})
  }
  return n
}
