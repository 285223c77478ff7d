import {Args, Flags} from '@oclif/core'

import {type ImportKernelResult, importKernel} from '../../build/kernel.js'
import {humanBytes, shortDigest} from '../../ui/format.js'
import {ProgressLine} from '../../ui/progress.js'
import {BaseCommand} from '../../cli/base-command.js'
import {parseAnnotations} from '../pack.js'

export default class KernelImport extends BaseCommand {
  static summary = 'Make a kernel artifact (kernel + modules) from a kernel image, a Debian kernel package or an unpacked root.'

  static description =
    'SOURCE is a kernel image (bzImage or vmlinux) given with --modules /lib/modules/VERSION, a Debian linux-image-*.deb, ' +
    'or a folder holding boot/vmlinuz-VERSION and lib/modules/VERSION. The modules become one deterministic tar layer ' +
    '(application/vnd.ovms.kernel.modules.v1.tar, lib/modules/VERSION/...), named by kernel.modules.ref in the OVMS manifest. ' +
    'The modules must include what the builder VM loads (virtio_pci, virtio_blk, ext4 and their dependencies). ' +
    'Use the artifact in an Ovmfile with KERNEL REF.'

  static examples = [
    '<%= config.bin %> kernel import linux-image-6.1.0-56-amd64_6.1.192-2_amd64.deb -t example/kernel:6.1',
    '<%= config.bin %> kernel import /boot/vmlinuz-$(uname -r) --modules /lib/modules/$(uname -r) -t example/kernel:host',
    '<%= config.bin %> kernel import ./kernel-root -t example/kernel:6.1 --json',
  ]

  static args = {
    source: Args.string({description: 'Kernel image, Debian kernel package (.deb), or root folder with boot/ and lib/modules/.', required: true}),
  }

  static flags = {
    modules: Flags.string({description: 'The kernel\'s modules folder (/lib/modules/VERSION); needed with a kernel image.'}),
    'kernel-version': Flags.string({description: 'Which kernel to take when the .deb or folder holds several (e.g. 6.1.0-56-amd64).'}),
    version: Flags.string({description: 'Artifact version (default: the kernel release).'}),
    cmdline: Flags.string({description: 'Default kernel command line.'}),
    author: Flags.string({description: 'metadata.author'}),
    created: Flags.string({description: 'metadata.created (RFC 3339); default SOURCE_DATE_EPOCH or now.'}),
    annotation: Flags.string({description: 'KEY=VALUE annotation; repeatable.', multiple: true, multipleNonGreedy: true, default: []}),
    tag: Flags.string({char: 't', description: 'Reference to tag the artifact with; repeatable.', multiple: true, multipleNonGreedy: true, required: true}),
  }

  async run(): Promise<ImportKernelResult> {
    const {args, flags} = await this.parse(KernelImport)
    const store = this.openStore(flags.store)
    const progress = new ProgressLine(this.jsonEnabled())
    this.note(`Importing ${args.source}`)
    const result = await importKernel(
      store,
      {
        source: args.source,
        modules: flags.modules,
        kernelVersion: flags['kernel-version'],
        version: flags.version,
        cmdline: flags.cmdline,
        author: flags.author,
        created: flags.created,
        annotations: parseAnnotations(flags.annotation),
        tags: flags.tag,
      },
      (e) => {
        if (e.type === 'layer-start') progress.start(e.role, e.total)
        else if (e.type === 'layer-progress') progress.update(e.role, e.done, e.total)
        else if (e.type === 'layer-done') progress.done(`${e.role.padEnd(14)} ${shortDigest(e.descriptor.digest)}  ${humanBytes(e.descriptor.size)}`)
      },
    )
    if (!this.jsonEnabled()) {
      this.note(`Kernel ${result.kernelVersion}, ${result.moduleCount} modules (from ${result.sourceKind})`)
      for (const r of result.references) this.log(`${r}@${result.digest}`)
    }
    return result
  }
}
